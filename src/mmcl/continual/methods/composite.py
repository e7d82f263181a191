"""Several methods at once (e.g. replay + LwF): every hook of every part, in order."""

from __future__ import annotations

from mmcl.continual.methods.base import Method


class Composite(Method):
    def __init__(self, parts: list[Method]):
        if len(parts) < 2:
            raise ValueError("a composite method needs at least two parts")
        data_parts = [p for p in parts if type(p).train_data is not Method.train_data]
        if len(data_parts) > 1:
            names = [p.name for p in data_parts]
            raise ValueError(f"methods {names} both choose the training data; combine only one")
        for hook in ("image_features", "class_features", "routes"):
            owners = [p.name for p in parts if getattr(type(p), hook) is not getattr(Method, hook)]
            if len(owners) > 1:
                raise ValueError(
                    f"methods {owners} both compute the {hook.replace('_', ' ')}; "
                    "combine only one of them"
                )
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.trains = all(p.trains for p in parts)

    @property
    def takes_captions(self) -> bool:
        return all(p.takes_captions for p in self.parts)

    @property
    def takes_instructions(self) -> bool:
        return all(p.takes_instructions for p in self.parts)

    @property
    def mixes_past_data(self) -> bool:
        return any(p.mixes_past_data for p in self.parts)

    def setup(self, model, run) -> None:
        for part in self.parts:
            part.setup(model, run)

    def before_task(self, task, model, run) -> None:
        for part in self.parts:
            part.before_task(task, model, run)

    def train_data(self, task, run):
        for part in self.parts:
            if type(part).train_data is not Method.train_data:
                return part.train_data(task, run)
        return run.stream_data(task.index)

    def extra_losses(self, model, batch, outputs):
        terms = {}
        for part in self.parts:
            terms.update(part.extra_losses(model, batch, outputs))
        return terms

    def after_optimizer_step(self, trainer) -> None:
        for part in self.parts:
            part.after_optimizer_step(trainer)

    def after_task(self, task, model, run) -> None:
        for part in self.parts:
            part.after_task(task, model, run)

    def predict(self, model, images, space, run):
        for part in self.parts:
            logits = part.predict(model, images, space, run)
            if logits is not None:
                return logits
        return None

    def image_features(self, model, images):
        for part in self.parts:  # at most one part computes them (see __init__)
            computed = part.image_features(model, images)
            if computed is not None:
                return computed
        return None

    def class_features(self, model, space):
        for part in self.parts:
            computed = part.class_features(model, space)
            if computed is not None:
                return computed
        return None

    def routes(self, model, images, ids=None, mask=None):
        for part in self.parts:  # at most one part routes (see __init__)
            routes = part.routes(model, images, ids, mask)
            if routes is not None:
                return routes
        return None

    def state_dict(self):
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state) -> None:
        for part in self.parts:
            part.load_state_dict(state.get(part.name, {}))

    def __repr__(self) -> str:
        return " + ".join(repr(p) for p in self.parts)
