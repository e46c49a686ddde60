"""``python -m contextdiff_ref.video.build_base --out DIR``: the video base model — the shipped shapes model taught the
moving-shapes vocabulary before it is inflated (method doc §7 starts from "a trained text-to-image UNet").

Why: the shapes model was trained on objects at the four quadrants' centres (± 1 px) and captions "a red circle at
the top left"; a moving object passes between the quadrants, and a clip's caption ("a red circle moving from the
top left to the top right") uses words the model never read. Tune-A-Video starts from Stable Diffusion, which has
seen objects everywhere and read such words; this gives the toy model the same footing, as an *image* model:
1. the words of :data:`MOTION_WORDS` are added to the tokenizer (their embedding rows seeded; :func:`add_words`);
2. an image folder (:mod:`contextdiff_ref.data.imagefolder` layout) of moving-shapes clips' frames, each frame
   captioned with its clip's caption (one- and two-object clips), plus the shapes dataset's stills so the model
   keeps its own captions; no clip with the caption of an evaluation clip or of one of its edits
   (:func:`evaluation_captions`), so the evaluation edits into combinations the base never saw as a one-object
   clip (a two-object clip, whose objects move along an axis, may still hold one of them as one of its objects);
3. fine-tuned with :class:`contextdiff_ref.training.finetune.Finetuner` (the whole UNet, the adapter and the text
   encoder; ContextDiff objective) and exported to ``DIR/model``, an image model directory that
   ``tune_video`` / ``benchmarks.video_evaluation --model`` inflate.

Resumable: the folder is written atomically once, the fine-tuning run checkpoints (``DIR/run``), the export is
atomic.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from contextdiff_ref.data.imagefolder import write_image_folder
from contextdiff_ref.data.shapes import caption, render, sample_scenes
from contextdiff_ref.models.model_dir import check_model_dir, load_model_dir, quiet_loading, save_model_dir
from contextdiff_ref.video.data import MOTION_WORDS, Clip, clip_caption, clip_edits, evaluation_clips, random_clip, render_clip
from contextdiff_ref.video.model_dir import add_words
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def write_motion_folder(out: str | os.PathLike[str], clips: int, two_object_clips: int, stills: int, seed: int = 0,
                        held_out: frozenset[str] = frozenset()) -> Path:
    """Step 2: ``clips`` one-object and ``two_object_clips`` two-object clips' frames (each captioned with its
    clip's caption) and ``stills`` shapes scenes (their own captions) as 32 × 32 PNGs with ``metadata.jsonl``,
    written atomically. The clips come from the NumPy stream ``[seed, 1000]``, apart from the evaluation's
    (:func:`contextdiff_ref.video.data.evaluation_clips`: ``[seed, num_objects]``); a drawn clip whose caption is in
    ``held_out`` is skipped (another is drawn). The stills are the shapes stream ``seed + 777``."""
    for name, value in (("clips", clips), ("two_object_clips", two_object_clips), ("stills", stills)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidArgumentError(name, value, "an integer >= 0")
    if clips + two_object_clips + stills == 0:
        raise InvalidArgumentError("clips", clips, "at least one clip or still in all")

    def entries() -> Iterator[tuple[str, np.ndarray, str]]:
        for i, clip in enumerate(motion_clips(clips, two_object_clips, seed, held_out)):
            for f, frame in enumerate(render_clip(clip)):
                yield f"clip{i:05d}-{f}.png", frame, clip_caption(clip)
        for j, scene in enumerate(sample_scenes(seed + 777, 0, stills)):
            yield f"still{j:05d}.png", render(scene), caption(scene)

    return write_image_folder(out, entries())


def motion_clips(clips: int, two_object_clips: int, seed: int = 0, held_out: frozenset[str] = frozenset()) -> Iterator[Clip]:
    """The folder's clips (step 2), in order: ``clips`` one-object then ``two_object_clips`` two-object ones from the
    NumPy stream ``[seed, 1000]``, a clip whose caption is in ``held_out`` drawn again."""
    rng = np.random.default_rng([seed, 1000])
    for i in range(clips + two_object_clips):
        clip = random_clip(rng, 1 if i < clips else 2)
        while clip_caption(clip) in held_out:
            clip = random_clip(rng, len(clip))
        yield clip


def base_clip_captions(clips: int = 600, two_object_clips: int = 200, seed: int = 0, held_out_clips: int = 24) -> frozenset[str]:
    """The captions of the clips a video base's folder holds (:func:`build_video_base`'s arguments; the defaults
    are the embedded base's): what an evaluation that must be unseen by the base leaves out."""
    held_out = evaluation_captions(held_out_clips) if held_out_clips else frozenset()
    return frozenset(clip_caption(c) for c in motion_clips(clips, two_object_clips, seed, held_out))


def evaluation_captions(clips: int = 24, edits: int = 2, seed: int = 0) -> frozenset[str]:
    """The captions of the editing evaluation's source clips and of their edits (its default settings): the video
    base never trains on a clip with one of them, so no evaluated source or edit is a colour–shape–motion
    combination the base has seen as a one-object clip (it has seen each colour and shape, and each motion, apart;
    a two-object clip's caption is never one of these, though one of its objects may move that way)."""
    sources = evaluation_clips(clips, seed)
    return frozenset(clip_caption(c) for clip in sources for c in (clip, *clip_edits(clip, edits)))


def with_motion_words(model: Path, dest: Path, seed: int = 0) -> Path:
    """Step 1: ``model`` with :data:`MOTION_WORDS` added (seeded), written to ``dest`` (atomically)."""
    components = load_model_dir(model)
    add_words(components, MOTION_WORDS, seed)
    save_model_dir(components, dest)
    return dest


def build_video_base(out: Path, model: Path, steps: int = 3000, clips: int = 600, two_object_clips: int = 200, stills: int = 2400,
                     batch_size: int = 32, learning_rate: float = 2e-4, seed: int = 0, held_out_clips: int = 24) -> Path:  # fmt: skip
    """Steps 1–3 in ``out`` (resumable); returns ``out/model``. The folder holds out the captions of the first
    ``held_out_clips`` evaluation clips and their two edits (:func:`evaluation_captions`)."""
    from contextdiff_ref.training.finetune import FinetuneConfig, Finetuner, export_finetuned

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "words").is_dir():
        with_motion_words(model, out / "words", seed)
    if not (out / "data").is_dir():
        held_out = evaluation_captions(held_out_clips) if held_out_clips else frozenset()
        write_motion_folder(out / "data", clips, two_object_clips, stills, seed, held_out)
    config = FinetuneConfig(model=str((out / "words").resolve()), data=str((out / "data").resolve()), steps=steps, batch_size=batch_size,
                            learning_rate=learning_rate, warmup_steps=100, train_text_encoder=True, seed=seed,
                            zero_terminal_snr=False)  # the shipped video base's recipe: the image model's cosine schedule kept  # fmt: skip
    trainer = Finetuner(config, out / "run")
    if trainer.step < steps:
        trainer.run(checkpoint_every=250, log_every=50)
    if not (out / "model").is_dir():
        export_finetuned(out / "run", out / "model")
    return out / "model"


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m contextdiff_ref.video.build_base", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="run directory (resumable); the model is written to OUT/model")
    p.add_argument("--model", type=Path, default=None, help="image model directory (default: the embedded default model)")
    p.add_argument("--steps", type=int, default=3000, help="fine-tuning steps (default: %(default)s)")
    p.add_argument("--clips", type=int, default=600, help="one-object clips in the folder (default: %(default)s)")
    p.add_argument("--two-object-clips", type=int, default=200, help="two-object clips (default: %(default)s)")
    p.add_argument("--stills", type=int, default=2400, help="shapes-dataset stills (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-4, help="(default: %(default)s)")
    p.add_argument("--held-out-clips", type=int, default=24, help="evaluation clips whose captions (and their edits') stay out (default: %(default)s)")
    args = p.parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    from contextdiff_ref.models.defaults import default_model_dir

    try:
        model = args.model if args.model is not None else default_model_dir()
        check_model_dir(model)
        path = build_video_base(args.out, Path(model), args.steps, args.clips, args.two_object_clips, args.stills, args.batch_size, args.lr,
                                  held_out_clips=args.held_out_clips)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
