"""The search service over a `mmcl index` folder (`mmcl serve`): `create_app` builds the
FastAPI app (mmcl.serve.app) over a `Searcher` (mmcl.serve.searcher). Needs `mmcl[serve]`."""
