"""A FAISS search index over `mmcl embed --images` outputs (the `mmcl index` command).

An index folder holds one finished version, `v000001/` (the FAISS index, `files.txt` with one
path a row, `meta.json` with the model identity and embedding settings), and `current`, the
name of the version in use. A build or update writes a new version folder whole (staged and
renamed), then replaces `current` atomically, then deletes the old version: a crash at any
point leaves the previous index usable.

- Up to `threshold` rows the index is exact (inner product over every row); above it, IVF (or
  HNSW with kind="hnsw"), with recall@10 against exact search measured on a sample of rows.
  The search effort (IVF's nprobe, HNSW's efSearch), unless given, is doubled from a cheap
  start until that recall reaches `target_recall`: random-like vectors need far more cells
  searched than clustered image embeddings, and a fixed default fits only one of them.
- Building again from a newer output of the same model adds only the new files, keeping the
  index's kind and parameters (a flat index that grows past `threshold` is rebuilt as IVF; IVF
  cells are not retrained: rebuild after the collection has grown several times). A file gone
  from the output, or whose embedding changed (cosine < 0.995 to the indexed one: the image was
  replaced), is an error: pass `rebuild=True` to build afresh.
- `search` refuses query features from another model than the indexed one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from mmcl.choices import DEFAULT_INDEX_THRESHOLD, INDEX_KINDS
from mmcl.eval.index_inputs import EmbedOutput, read_embed_output
from mmcl.io.atomic import atomic_folder, atomic_path

INDEX_FORMAT = 1
KINDS = INDEX_KINDS
DEFAULT_THRESHOLD = DEFAULT_INDEX_THRESHOLD
CHANGED_BELOW = 0.995  # cosine between a file's indexed and new embedding (rounding: > 0.9999)
_CHUNK = 65_536
# What must agree between the indexed rows and rows added later (and query models).
_IDENTITY_KEYS = ("weights_sha256", "model_config", "preprocess", "image_reading", "settings")


@dataclass
class IndexSettings:
    kind: str = "auto"  # auto: flat up to `threshold` rows, ivf above
    threshold: int = DEFAULT_THRESHOLD
    nlist: int | None = None  # IVF cells; default 4 * sqrt(rows), at most rows / 39
    nprobe: int | None = None  # IVF cells searched a query; default: tuned to target_recall
    hnsw_m: int = 32  # HNSW links a node
    ef_search: int | None = None  # HNSW candidates a query; default: tuned to target_recall
    # Unless nprobe / ef_search is given, the query-time effort starts at nlist / 10 cells (64
    # candidates) and doubles until the measured recall@10 reaches this (or everything is read).
    target_recall: float = 0.95
    recall_queries: int = 200  # rows sampled as queries to measure recall@10
    seed: int = 0


@dataclass
class IndexReport:
    folder: Path
    kind: str
    rows: int
    added: int  # rows added by this call (all of them for a fresh build)
    rebuilt: bool  # False: rows appended to the existing index
    recall_at_10: float | None  # None: exact index (recall 1 by construction)
    seconds: float
    params: dict = field(default_factory=dict)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("mmcl index needs faiss: pip install 'mmcl[search]'") from None
    return faiss


class ModelMismatchError(ValueError):
    """Query features from another model (or settings) than the one the index was built with."""


class SearchIndex:
    """An opened index folder (see `open_index`)."""

    def __init__(self, folder: Path, version: Path):
        self.folder = folder
        self.meta = json.loads((version / "meta.json").read_text())
        self.names = (version / "files.txt").read_text().split("\n")[:-1]
        self.faiss_index = _faiss().read_index(str(version / "index.faiss"))
        if len(self.names) != self.faiss_index.ntotal:
            raise ValueError(f"{version}: files.txt and index.faiss disagree; rebuild the index")

    @property
    def rows(self) -> int:
        return len(self.names)

    def check_model(self, model) -> None:
        """Refuse `model` (a module, or its `weights_fingerprint`) if it is not the index's."""
        from mmcl.eval.embed_folder import weights_fingerprint

        fingerprint = model if isinstance(model, str) else weights_fingerprint(model)
        indexed = self.meta["model"]
        if fingerprint != indexed["weights_sha256"]:
            query = "the query model" if isinstance(model, str) else type(model).__name__
            raise ModelMismatchError(
                f"{self.folder} was built with model {indexed.get('model')} "
                f"(pretrained {indexed.get('pretrained')}, weights {indexed['weights_sha256'][:12]}"
                f"), but {query} has weights {fingerprint[:12]}: query with the index's model, "
                f"or rebuild the index from embeddings of this one"
            )

    def search(self, features, k: int = 10, model=None) -> tuple[np.ndarray, list[list[str]]]:
        """The `k` best rows for each query row: (scores (queries, k), paths a query).

        `features` are L2-normalised query embeddings (numpy or torch, (dim,) or (queries,
        dim)); give the `model` that made them and a model other than the index's is refused.
        Approximate indexes may find fewer than `k` rows: the missing scores are NaN and the
        missing paths are left out.
        """
        if model is not None:
            self.check_model(model)
        queries = np.asarray(
            features.detach().float().cpu() if hasattr(features, "detach") else features,
            dtype=np.float32,
        )
        queries = np.ascontiguousarray(queries.reshape(1, -1) if queries.ndim == 1 else queries)
        if queries.ndim != 2 or queries.shape[1] != self.meta["dim"]:
            raise ValueError(
                f"query features of shape {queries.shape} for {self.folder}, whose rows have "
                f"dimension {self.meta['dim']}"
            )
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        scores, rows = self.faiss_index.search(queries, min(k, self.rows))
        scores[rows < 0] = np.nan
        paths = [[self.names[r] for r in query if r >= 0] for query in rows]
        return scores, paths

    def search_text(
        self, texts, model, tokenizer, k: int = 10, device="cpu"
    ) -> tuple[np.ndarray, list[list[str]]]:
        """`search` for the embeddings of `texts` by `model` (checked first) and `tokenizer`.

        >>> # index = open_index("photos.index"); model = mmcl.create_model(name, pretrained=...)
        >>> # scores, paths = index.search_text(["a red car"], model, mmcl.get_tokenizer(name))
        """
        from mmcl.eval.embed import embed_texts

        self.check_model(model)
        texts = [texts] if isinstance(texts, str) else list(texts)
        features = embed_texts(model, texts, tokenizer, device=device, progress=False)
        return self.search(features, k)


def open_index(folder: str | os.PathLike) -> SearchIndex:
    """The index `build_index` wrote to `folder`."""
    folder = Path(folder)
    return SearchIndex(folder, _current_version(folder))


def build_index(
    features: str | os.PathLike,
    output: str | os.PathLike,
    settings: IndexSettings | None = None,
    rebuild: bool = False,
) -> IndexReport:
    """Index the `mmcl embed --images` output `features` into the folder `output`.

    When `output` already holds an index of the same model and settings, only the files new
    in `features` are added (see the module's notes); `rebuild=True` starts afresh.

    >>> # report = build_index("photos.npy", "photos.index")
    >>> # open_index("photos.index").search(query_features, k=10)
    """
    settings = settings or IndexSettings()
    if settings.kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {settings.kind!r}")
    if settings.threshold < 0 or settings.recall_queries < 1:
        raise ValueError("threshold must be >= 0 and recall_queries positive")
    if not 0 < settings.target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {settings.target_recall}")
    output = Path(output)
    embed = read_embed_output(features)
    start = time.perf_counter()
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: a file, expected an index folder")
    if output.is_dir() and any(output.iterdir()) and not (output / "current").is_file():
        raise ValueError(f"{output}: a folder that holds no index; give a new or empty folder")
    if output.is_dir() and any(output.iterdir()) and not rebuild:
        old = open_index(output)  # errors if the folder is not an index
        new_rows = _new_rows(old, embed)
        # An update keeps the index's kind and parameters (given with it or chosen by auto),
        # except that a flat index grown past the threshold is rebuilt approximate.
        kind = _kind(settings, len(new_rows) + old.rows)
        if settings.kind == "auto" and not (old.meta["kind"] == "flat" and kind != "flat"):
            kind = old.meta["kind"]
        if old.meta["kind"] == kind:
            return _append(old, embed, new_rows, settings, start)
        settings = replace(settings, kind=kind)
    index, kind, params = _build(embed.features, settings)
    recall = _tune_effort(index, kind, params, embed, settings)
    _write_version(output, index, embed.names, _meta(embed, kind, params, recall, settings))
    seconds = time.perf_counter() - start
    return IndexReport(
        output, kind, len(embed.names), len(embed.names), True, recall, seconds, params
    )


def _kind(settings: IndexSettings, rows: int) -> str:
    if settings.kind != "auto":
        return settings.kind
    return "flat" if rows <= settings.threshold else "ivf"


def _build(features: np.ndarray, settings: IndexSettings):
    faiss = _faiss()
    rows, dim = features.shape
    kind = _kind(settings, rows)
    params: dict = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = settings.ef_search or 64
        params = {"hnsw_m": settings.hnsw_m, "ef_search": index.hnsw.efSearch}
    else:
        # faiss's k-means wants >= 39 training points a cell; 4 * sqrt(n) cells is its guide.
        nlist = settings.nlist or max(1, min(int(4 * math.sqrt(rows)), rows // 39))
        if nlist > rows:
            raise ValueError(f"nlist {nlist} is more than the {rows} rows to index")
        nprobe = min(settings.nprobe or max(1, nlist // 10), nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.set_direct_map_type(faiss.DirectMap.Array)  # reconstruct(): changed-file checks
        index.cp.seed = settings.seed
        sample = np.random.default_rng(settings.seed).choice(
            rows, min(rows, 64 * nlist), replace=False
        )
        index.train(np.ascontiguousarray(features[np.sort(sample)]))
        index.nprobe = nprobe
        params = {"nlist": nlist, "nprobe": nprobe}
    _add(index, features, range(rows))
    return index, kind, params


def _add(index, features: np.ndarray, rows) -> None:
    rows = np.asarray(rows, dtype=np.int64)
    for start in range(0, len(rows), _CHUNK):  # a memory-mapped .npy is read a chunk at a time
        chunk = np.ascontiguousarray(features[rows[start : start + _CHUNK]], dtype=np.float32)
        if not np.isfinite(chunk).all():
            raise ValueError("the features hold NaN or infinite values; rerun `mmcl embed`")
        index.add(chunk)


def _new_rows(old: SearchIndex, embed: EmbedOutput) -> list[int]:
    """Rows of `embed` not yet in `old`, after checking the rest are unchanged."""
    indexed_identity = {**old.meta["model"], **old.meta["embedding"]}
    mismatched = [
        key for key in _IDENTITY_KEYS if indexed_identity.get(key) != embed.record.get(key)
    ]
    if mismatched:
        raise ValueError(
            f"{old.folder} indexes embeddings of another model or settings than "
            f"{embed.features_path} ({', '.join(sorted(set(mismatched)))} differ): "
            f"rebuild it (mmcl index --rebuild)"
        )
    position = {name: row for row, name in enumerate(embed.names)}
    removed = [name for name in old.names if name not in position]
    if removed:
        raise ValueError(
            f"{len(removed)} indexed file(s) are not in {embed.features_path} (e.g. {removed[0]}):"
            f" rebuild the index (mmcl index --rebuild) to drop them"
        )
    changed = []
    for start in range(0, old.rows, _CHUNK):  # a chunk at a time: the index may not fit twice
        indexed = old.faiss_index.reconstruct_n(start, min(_CHUNK, old.rows - start))
        rows = [position[name] for name in old.names[start : start + len(indexed)]]
        cosine = np.einsum("ij,ij->i", indexed, embed.features[rows])
        changed.extend(start + np.flatnonzero(cosine < CHANGED_BELOW))
    if len(changed):
        raise ValueError(
            f"{len(changed)} indexed file(s) have another embedding in {embed.features_path} "
            f"(e.g. {old.names[changed[0]]}: replaced?): rebuild the index (mmcl index --rebuild)"
        )
    known = set(old.names)
    return [row for row, name in enumerate(embed.names) if name not in known]


def _append(old: SearchIndex, embed: EmbedOutput, new_rows: list[int], settings, start):
    meta = old.meta
    if new_rows:
        _add(old.faiss_index, embed.features, new_rows)
        names = old.names + [embed.names[row] for row in new_rows]
        recall = _measure_recall(old.faiss_index, meta["kind"], embed, names, settings)
        meta = {
            **meta,
            "rows": len(names),
            "recall_at_10": recall,
            "source": str(embed.features_path),
        }
        _write_version(old.folder, old.faiss_index, names, meta)
    seconds = time.perf_counter() - start
    return IndexReport(
        old.folder, meta["kind"], meta["rows"], len(new_rows), False, meta["recall_at_10"],
        seconds, meta["params"],
    )  # fmt: skip


def _tune_effort(index, kind, params: dict, embed: EmbedOutput, settings) -> float | None:
    """recall@10 of the new `index`, after doubling its search effort (the one not given in
    `settings`) until the recall reaches `settings.target_recall`; `params` records the effort
    chosen. The effort is saved with the index (faiss stores nprobe and efSearch)."""
    recall = _measure_recall(index, kind, embed, embed.names, settings)
    if kind == "ivf" and settings.nprobe is None:
        while recall < settings.target_recall and index.nprobe < index.nlist:
            index.nprobe = min(2 * index.nprobe, index.nlist)
            recall = _measure_recall(index, kind, embed, embed.names, settings)
        params["nprobe"] = index.nprobe
    elif kind == "hnsw" and settings.ef_search is None:
        # efSearch beyond the row count reads no more of the graph.
        while recall < settings.target_recall and index.hnsw.efSearch < index.ntotal:
            index.hnsw.efSearch = 2 * index.hnsw.efSearch
            recall = _measure_recall(index, kind, embed, embed.names, settings)
        params["ef_search"] = index.hnsw.efSearch
    return recall


def _measure_recall(index, kind, embed: EmbedOutput, names, settings) -> float | None:
    """Mean share of the exact top 10 (numpy, over `embed`) found by `index`, for sampled rows.

    The sampled rows are indexed themselves; each is left out of its own top 10 (truth and
    found), so the figure estimates the recall of new queries rather than being lifted by
    every row finding itself."""
    if kind == "flat":
        return None
    rows = len(embed.names)
    k = min(10, rows - 1)
    if k < 1:
        return 1.0
    sample = np.sort(
        np.random.default_rng(settings.seed + 1).choice(
            rows, min(rows, settings.recall_queries), replace=False
        )
    )
    queries = np.ascontiguousarray(embed.features[sample], dtype=np.float32)
    exact = exact_top_k(queries, embed.features, k + 1)
    _, found = index.search(queries, k + 1)
    hits = []
    for query, truth, got in zip(sample, exact, found, strict=True):
        own = embed.names[query]
        truth_names = [embed.names[r] for r in truth if r != query][:k]
        got_names = [names[r] for r in got if r >= 0 and names[r] != own][:k]
        hits.append(len(set(truth_names) & set(got_names)))
    return float(np.mean(hits) / k)


def exact_top_k(queries: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of the `k` largest inner products of each query, best first (brute force)."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(features), _CHUNK):
        scores = queries @ np.asarray(features[start : start + _CHUNK], dtype=np.float32).T
        rows = np.broadcast_to(np.arange(start, start + scores.shape[1]), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows


def _meta(embed: EmbedOutput, kind, params, recall, settings: IndexSettings) -> dict:
    record = embed.record
    return {
        "format": INDEX_FORMAT,
        "kind": kind,
        "rows": len(embed.names),
        "dim": int(embed.features.shape[1]),
        "params": params,
        "recall_at_10": recall,
        "settings": asdict(settings),
        "model": {key: record.get(key) for key in ("model", "pretrained", *_IDENTITY_KEYS[:2])},
        "embedding": {key: record.get(key) for key in _IDENTITY_KEYS[2:]},
        "source": str(embed.features_path),
    }


def _current_version(folder: Path) -> Path:
    pointer = folder / "current"
    if not pointer.is_file():
        what = "not found" if not folder.exists() else "not an index folder (no `current` file)"
        raise FileNotFoundError(f"{folder}: {what}; build one with `mmcl index`")
    version = folder / pointer.read_text().strip()
    if not (version / "meta.json").is_file():
        raise ValueError(f"{folder}: `current` names {version.name}, which is missing; rebuild")
    return version


def _write_version(folder: Path, index, names: list[str], meta: dict) -> None:
    """Write a new version folder whole, point `current` at it, then drop the older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    # Only folders named as this function names them (v000001, ...) are versions to drop.
    versions = sorted(p.name for p in folder.glob("v" + "[0-9]" * 6) if p.is_dir())
    name = f"v{int(versions[-1][1:]) + 1 if versions else 1:06d}"
    with atomic_folder(folder / name) as staging:
        _write_files(staging, index, names, meta)
    with atomic_path(folder / "current") as tmp:
        tmp.write_text(name + "\n")
    for old in versions:
        shutil.rmtree(folder / old, ignore_errors=True)


def _write_files(staging: Path, index, names: list[str], meta: dict) -> None:
    _faiss().write_index(index, str(staging / "index.faiss"))
    (staging / "files.txt").write_text("".join(name + "\n" for name in names))
    (staging / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
