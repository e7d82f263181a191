"""The cached starting model: trained once by the training engine, then reused."""

import mmcl
from mmcl.continual import pretrained


def test_the_starting_model_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path))
    calls = []
    original = pretrained.run_recipe

    def counting(recipe):
        calls.append(recipe.train.steps)
        return original(recipe)

    monkeypatch.setattr(pretrained, "run_recipe", counting)
    path = pretrained.pretrained_scene_model(steps=2, progress=False)
    assert path.is_file() and path.parent == tmp_path / "pretrained" and calls == [2]
    assert pretrained.pretrained_scene_model(steps=2, progress=False) == path
    assert calls == [2]  # the second call read the cache
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    model = mmcl.create_model(None, pretrained=path)
    assert model.image_size == 32 and type(model.visual).__name__ == "VisionTransformer"
    other = pretrained.pretrained_scene_model(steps=3, progress=False)
    assert other != path and calls == [2, 3]  # another length is another cache entry
