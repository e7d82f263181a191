"""`mmcl ask`: questions about one image to a bridge's model folder with its tokenizer (a
Hugging Face LLaVA or BLIP-2 folder, or mmcl's MiniGPT-4 folder, as the llava-scenes,
blip2-scenes and minigpt4-scenes recipes write into runs/<name>/hf/). One
question on the command line gets one answer; without one, questions are read from stdin a
line at a time until its end, as one conversation (`mmcl.eval.chat.ImageChat`). The prompt's
system text is the one the folder's tokenizer chat template records (the llava recipes write
their `data.system` there), else Vicuna's; `--system` overrides it. A BLIP VQA folder (the
blip-vqa-scenes recipe's run folder, with its vocabulary) answers too, each question on its
own: BLIP's answer decoder reads one question, without a chat template or history."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmcl.choices import PRECISION_NAMES
from mmcl.commands.options import add_input_arguments, image_reading

# The files `save_pretrained` writes for a tokenizer; one of them must be in the folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def add_parser(commands) -> None:
    ask = commands.add_parser(
        "ask",
        help="answer questions about an image (LLaVA, BLIP-2, MiniGPT-4, BLIP VQA folders)",
        description="Answer a question about an image; without QUESTION, read questions from "
        "stdin a line at a time, as one conversation, until its end.",
    )
    ask.add_argument("question", nargs="?", help="the question (default: read stdin)")
    ask.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="FOLDER",
        help="a LLaVA, BLIP-2, MiniGPT-4 or CogVLM folder with its tokenizer (e.g. runs/<name>/hf/ "
        "of the llava-scenes, blip2-scenes or minigpt4-scenes recipe, runs/cogvlm-scenes/model/), "
        "or a BLIP VQA folder (runs/blip-vqa-scenes)",
    )
    ask.add_argument(
        "--image", type=Path, required=True, metavar="FILE", help="the image asked about"
    )
    ask.add_argument("--precision", default="fp32", choices=PRECISION_NAMES)
    ask.add_argument("--device", default="cpu")
    add_input_arguments(ask)
    decoding = ask.add_argument_group("decoding (greedy unless --top-p or --beams)")
    decoding.add_argument(
        "--max-new-tokens", type=int, default=64, help="most tokens an answer gets (default 64)"
    )
    decoding.add_argument(
        "--top-p",
        type=float,
        help="nucleus sampling from the most probable tokens of this total probability",
    )
    decoding.add_argument(
        "--seed", type=int, default=0, help="seed of --top-p sampling (same seed, same answers)"
    )
    decoding.add_argument(
        "--beams",
        type=int,
        default=1,
        metavar="N",
        help="beam search with N beams (transformers' generate(num_beams=N); default 1: greedy)",
    )
    decoding.add_argument(
        "--system",
        help="the chat template's system text (default: the one the folder's tokenizer chat "
        "template records, as the llava recipes write it; else Vicuna's, as LLaVA-1.5's)",
    )
    ask.set_defaults(handler=run_ask)


def run_ask(args: argparse.Namespace) -> int:
    from mmcl.data.chat_template import ChatTemplate, TemplateMismatchError, system_text
    from mmcl.data.images import load_image
    from mmcl.eval.chat import ImageChat
    from mmcl.models.blip import Blip

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.beams < 1:
        raise ValueError(f"--beams must be at least 1, got {args.beams}")
    if args.beams > 1 and args.top_p is not None:
        raise ValueError("--beams and --top-p do not combine: beam search or sampling, choose one")
    if args.question is not None and not args.question.strip():
        raise ValueError("the question is empty; give one, or none to read questions from stdin")
    with image_reading(args):  # before the model loads: a bad image fails at once
        image = load_image(args.image, args.high_bit_depth)
    model, preprocess = load_folder(args.model, args.device, args.precision)
    pixel_values = preprocess(image).unsqueeze(0).to(args.device)
    if isinstance(model, Blip):
        return ask_blip(model, pixel_values, args)
    tokenizer = bridge_tokenizer(model, args.model)
    system = args.system
    if system is None:
        try:
            system = system_text(tokenizer)
        except TemplateMismatchError as error:
            raise ValueError(
                f"--model {args.model}: the tokenizer's {error}; give the system text the "
                f"model was trained with as --system ('' for none)"
            ) from None
    template = ChatTemplate() if system is None else ChatTemplate(system=system)
    try:
        chat = ImageChat(
            model,
            tokenizer,
            pixel_values,
            template,
            args.max_new_tokens,
            args.top_p,
            args.seed,
            args.beams,
        )
    except TemplateMismatchError as error:
        raise ValueError(
            f"--model {args.model}: {error} (here: --system with the system text the model was "
            f"trained with, '' for none)"
        ) from None
    for question in questions(args.question):
        print(chat.ask(question), flush=True)
    return 0


def questions(given: str | None):
    """The question given, or else stdin's lines (a prompt on a terminal) until its end."""
    if given is not None:
        yield given
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            return
        if line.strip():
            yield line.strip()


def ask_blip(model, pixel_values, args: argparse.Namespace) -> int:
    """A BLIP VQA model (the blip-vqa-scenes recipe's folder) answers each question on its
    own: its answer decoder reads one question, with no chat template and no history."""
    import torch

    from mmcl.eval.scene_vqa import BlipAnswerer

    if args.system is not None:
        raise ValueError("--system: a BLIP answers without a chat template or system text")
    missing = [part for part in ("text_encoder", "text_decoder") if part not in model.config.parts]
    if missing or model.tokenizer is None:
        raise ValueError(
            f"--model {args.model}: a BLIP "
            + (f"without {missing}" if missing else "without its vocabulary (vocab.txt)")
            + "; mmcl ask answers with a BLIP VQA folder (runs/blip-vqa-scenes of the "
            "blip-vqa-scenes recipe)"
        )
    generator = torch.Generator().manual_seed(args.seed)
    answer = BlipAnswerer(
        args.max_new_tokens,
        beams=args.beams,
        top_p=args.top_p,
        generator=generator if args.top_p is not None else None,
    )
    for question in questions(args.question):
        print(answer(model, pixel_values, [question])[0].strip(), flush=True)
    return 0


def load_folder(folder: Path, device: str, precision: str):
    """`(model, preprocess)` of a folder `mmcl ask` answers with: a bridge's (LLaVA, BLIP-2,
    MiniGPT-4, CogVLM) or a BLIP's; anything else refused in one line that says what to give."""
    import warnings

    import mmcl
    from mmcl.models.blip import Blip
    from mmcl.models.bridges.blip2 import Blip2
    from mmcl.models.bridges.llava import Llava

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CLIP checkpoint's activation warning: refused below
        model, preprocess = mmcl.load(folder, device=device, precision=precision)
    if not isinstance(model, (Llava, Blip2, Blip)):
        raise ValueError(
            f"--model {folder}: a {type(model).__name__} model, not LLaVA, BLIP-2, MiniGPT-4 or "
            f"BLIP; mmcl ask answers with LLaVA folders and those (e.g. runs/<name>/hf/ of the "
            f"llava-scenes, blip2-scenes or minigpt4-scenes recipe, runs/blip-vqa-scenes)"
        )
    return model, preprocess


def bridge_tokenizer(model, folder: Path):
    """The tokenizer of a bridge's folder (LLaVA, BLIP-2 with an image placeholder,
    MiniGPT-4), each way it can be wrong refused in one line that says what to give instead."""
    from mmcl.models.bridges.blip2 import Blip2

    if isinstance(model, Blip2) and (model.config.instruct or model.config.image_token_id is None):
        raise ValueError(
            f"--model {folder}: "
            + (
                "an InstructBLIP, whose Q-Former reads the question too, which mmcl ask does not "
                "give it yet"
                if model.config.instruct
                else "a BLIP-2 without an image_token_index: the chat needs a placeholder for "
                "its query tokens in the prompt (the blip2-scenes recipe's folders have one)"
            )
        )
    if not folder.is_dir() or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"--model {folder}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); give the LLaVA "
            f"folder the recipes write (runs/<name>/hf/, model and tokenizer), or save the "
            f"model's tokenizer into it with tokenizer.save_pretrained(FOLDER)"
        )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocabulary = model.language_model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocabulary:
        raise ValueError(
            f"--model {folder}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"language model only {vocabulary}: not this model's tokenizer"
        )
    return tokenizer
