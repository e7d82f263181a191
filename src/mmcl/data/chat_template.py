"""The chat template of LLaVA-1.5 (Vicuna v1) and the loss mask: conversations to token ids
and labels, with the loss on the assistant's answers only.

A conversation of turns (q1, a1), (q2, a2) becomes

    <s> {system} USER: {q1} ASSISTANT: {a1} </s> USER: {q2} ASSISTANT: {a2} </s>

with ``<image>`` in a question replaced by `tokens_per_image` image placeholder ids. Labels
equal the ids on the answers and on the end token after each (so the model learns to stop),
and `IGNORE_INDEX` everywhere else: the system text, the user turns, the role markers and
the image tokens.

Each piece is tokenized on its own and the ids are joined, so every token belongs to exactly
one piece and the mask cannot drift from the text (LLaVA's own code tokenizes whole rounds
and counts lengths, and where a tokenizer merges across a boundary the counts disagree and it
masks the whole sample, with only a warning, which trains on a zero loss). Here any sample
whose labels would all be masked, because its answers tokenize to nothing or because
truncation cuts them all, is an `EmptyLossError` naming the sample; a tokenizer that cannot
spell the template (its words come out unknown, or it lacks the begin/end tokens) is refused
when the encoder is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mmcl.data.conversations import IMAGE_PLACEHOLDER, Conversation

IGNORE_INDEX = -100  # what `torch.nn.functional.cross_entropy` and transformers skip
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)


class EmptyLossError(ValueError):
    """A sample whose every label would be masked (it would train on a zero loss)."""


class TemplateMismatchError(ValueError):
    """A tokenizer that cannot encode the chat template."""


@dataclass(frozen=True)
class ChatTemplate:
    """The words around the turns; Vicuna v1's (LLaVA-1.5's) by default."""

    system: str = VICUNA_SYSTEM
    user: str = "USER:"
    assistant: str = "ASSISTANT:"

    def to_jinja(self) -> str:
        """This template as a transformers chat template (``tokenizer.chat_template``): it
        renders the text the encoder's ids spell, with this system text unless the messages
        open with a system message of their own. `system_text` reads it back."""
        # The system text goes in raw, so that no character of it is read as Jinja.
        system = f"{{% raw %}}{self.system} {{% endraw %}}" if self.system else ""
        return (
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
            "{% if messages[0]['content'] %}{{ messages[0]['content'] + ' ' }}{% endif %}"
            f"{{% else %}}{system}{{% endif %}}"
            "{% for message in messages %}{% if message['role'] == 'user' %}"
            f"{{{{ '{self.user} ' + message['content'] + ' ' }}}}"
            "{% elif message['role'] == 'assistant' %}"
            f"{{{{ '{self.assistant} ' + message['content'] + eos_token }}}}"
            "{% endif %}{% endfor %}"
            f"{{% if add_generation_prompt %}}{{{{ '{self.assistant}' }}}}{{% endif %}}"
        )


def system_text(tokenizer, template: ChatTemplate = ChatTemplate()) -> str | None:
    """The system text of the tokenizer's chat template (as `ChatTemplate.to_jinja` writes
    it, e.g. into the folders the LLaVA recipes write): what it renders before the first
    user turn, '' for none. None when the tokenizer has no chat template. A template of
    another layout than ``{system} USER: ... ASSISTANT:`` is a `TemplateMismatchError`."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    probe = "\ue000"  # a private-use character: no template's own text
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": probe}], tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # a template written for other message shapes
        raise TemplateMismatchError(f"its chat template does not render: {error}") from None
    text = rendered.removeprefix(tokenizer.bos_token or "")
    tail = f"{template.user} {probe} {template.assistant}"
    head = text.removesuffix(tail)
    system = head.removesuffix(" ")
    if head == text or head != (f"{system} " if system else ""):
        raise TemplateMismatchError(
            f"its chat template is not LLaVA-1.5's layout ({{system}} {template.user} ... "
            f"{template.assistant}); it renders {rendered!r}"
        )
    return system


@dataclass(frozen=True)
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken


class ConversationEncoder:
    """Conversations -> `EncodedConversation`, for one tokenizer and one template.

    `tokenizer`: a transformers tokenizer (``encode(text, add_special_tokens=False)``,
    ``bos_token_id``, ``eos_token_id``, ``unk_token_id``). `image_token_id` and
    `tokens_per_image`: the bridge's (`Llava.image_token_id`, `Llava.tokens_per_image`).
    `max_length`: samples are cut to it from the right (None: never).
    """

    def __init__(
        self,
        tokenizer,
        image_token_id: int,
        tokens_per_image: int,
        template: ChatTemplate = ChatTemplate(),
        max_length: int | None = None,
    ):
        self.tokenizer, self.template = tokenizer, template
        self.image_token_id, self.tokens_per_image = image_token_id, tokens_per_image
        self.max_length = max_length
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(tokenizer, name, None) is None:
                raise TemplateMismatchError(
                    f"the tokenizer has no {name.removesuffix('_token_id')} token; the chat template "
                    f"starts each sample with one and ends each answer with the other"
                )
        unknown = getattr(tokenizer, "unk_token_id", None)
        for part in ("system", "user", "assistant"):
            text = getattr(template, part)
            if unknown is not None and unknown in self._tokens(text):
                raise TemplateMismatchError(
                    f"the tokenizer does not know the template's {part} text {text!r} (it comes "
                    f"out as the unknown token): train the tokenizer on text that includes it, "
                    f"or give a ChatTemplate in its words"
                )

    def encode(self, conversation: Conversation, where: str = "sample") -> EncodedConversation:
        """Ids and labels of one conversation; `where` names it in errors."""
        ids, labels = [self.tokenizer.bos_token_id], [IGNORE_INDEX]
        for number, (question, answer) in enumerate(conversation.turns):
            prompt = self._prompt_ids(question, first=number == 0)
            answer_ids = self._tokens(f" {answer}")
            if not answer_ids:
                raise EmptyLossError(
                    f"{where} (id {conversation.id!r}): answer {number} ({answer!r}) tokenizes "
                    f"to no tokens; its loss would be zero"
                )
            answer_ids.append(self.tokenizer.eos_token_id)
            ids += prompt + answer_ids
            labels += [IGNORE_INDEX] * len(prompt) + answer_ids
        if self.max_length is not None:
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise EmptyLossError(
                f"{where} (id {conversation.id!r}): no answer token is left within max_length "
                f"{self.max_length} (the first question alone takes {len(self._first(conversation))} "
                f"tokens); its loss would be zero: raise max_length or shorten the sample"
            )
        return EncodedConversation(ids, labels)

    def encode_prompt(self, history: Sequence[tuple[str, str]], question: str) -> list[int]:
        """The ids a model answers `question` from, after the answered turns `history`: the
        same layout as in training, up to and including the last assistant marker."""
        ids = [self.tokenizer.bos_token_id]
        for number, (asked, answer) in enumerate(history):
            ids += self._prompt_ids(asked, first=number == 0)
            ids += self._tokens(f" {answer}") + [self.tokenizer.eos_token_id]
        return ids + self._prompt_ids(question, first=not history)

    def _first(self, conversation: Conversation) -> list[int]:
        return [self.tokenizer.bos_token_id, *self._prompt_ids(conversation.turns[0][0], True)]

    def _prompt_ids(self, question: str, first: bool) -> list[int]:
        """``{system} USER: {question} ASSISTANT:`` (the system text on the first turn only),
        with the image's placeholders where ``<image>`` is."""
        template = self.template
        text = f"{template.system} " if first and template.system else ""
        text += f"{template.user} {question} {template.assistant}"
        pieces = text.split(IMAGE_PLACEHOLDER)
        ids = self._tokens(pieces[0])
        for piece in pieces[1:]:
            ids += [self.image_token_id] * self.tokens_per_image + self._tokens(piece)
        return ids

    def _tokens(self, text: str) -> list[int]:
        encoded = self.tokenizer.encode(text, add_special_tokens=False)
        return list(getattr(encoded, "ids", encoded))


def collate_for_training(
    samples: Sequence[EncodedConversation], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``labels`` (`IGNORE_INDEX` on padding) and
    ``attention_mask``, each ``(batch, longest)``."""
    longest = max(len(sample.input_ids) for sample in samples)
    ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        length = len(sample.input_ids)
        ids[row, :length] = torch.tensor(sample.input_ids)
        labels[row, :length] = torch.tensor(sample.labels)
        mask[row, :length] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def left_pad(
    prompts: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for generation, padded on the left: ``(input_ids, attention_mask)``."""
    longest = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), longest), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, longest - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, longest - len(prompt) :] = 1
    return ids, mask
