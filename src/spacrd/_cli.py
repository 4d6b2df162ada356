"""The ``spacrd`` command: CTR calls for pipelines (``predict``), models from labelled data (``train``), the demo.

Exit codes: 0 success; 2 bad usage or input, or an output that could not be written (a one-line message
on standard error); 1 an unexpected error. ``--debug`` adds the traceback. Progress goes to standard
error, results to files under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import traceback
from pathlib import Path

from spacrd._cli_io import FORMATS_HELP, InputError
from spacrd._constants import SECTION_SCALINGS

MAIN_EPILOG = """\
examples:
  spacrd predict --model her2st section.h5ad --out results/
  spacrd predict --model her2st spaceranger_run/outs --out results/
  spacrd predict --model my_model/ sample.zarr --table table --out results/
  spacrd train labelled.h5ad --labels-key cancer --section-key section --out my_model/
  spacrd train section.h5ad --annotations regions.geojson --classes Tumor=cancer,Stroma=non-cancer \
      --out my_model/
  spacrd predict --model my_model/ other.h5ad --regions --out results/
  spacrd demo

exit codes: 0 success, 2 bad usage or input (also a failed write: a full disk, no permission),
  1 unexpected error (--debug shows the traceback)
"""
PREDICT_EPILOG = """\
outputs (under --out):
  spots.csv        one row per spot: spot (index), section, ctr_prob, ctr
  ctr.png          the probabilities on the H&E (spacrd.pl.ctr), unless --no-plot
  annotated.h5ad   the input with obs["ctr_prob"], obs["ctr"] and uns["spacrd"] (.h5ad and Space Ranger
                   inputs); a SpatialData .zarr instead gets its table rewritten in place, with the
                   same entries, and nothing else of it is copied or changed
  regions.geojson  with --regions: the called region of each section (spacrd.tl.ctr_regions) as QuPath
                   annotations, in the coordinates of the spots (full-resolution pixels for .h5ad and
                   Space Ranger inputs); a .zarr also gets them as shapes element(s) "ctr_regions"

Every output is written under a temporary name and renamed into place when complete: a failed run
(a full disk, no permission) leaves no partial file and reports what was not written. INPUT is never
overwritten, and --out holding a previous run's outputs is refused unless --overwrite is given.

examples:
  spacrd predict --model her2st section.h5ad --out results/
  spacrd predict --model her2st spaceranger_run/outs --out results/ --min-gene-overlap 0.3
  spacrd predict --model my_model/ normalised.h5ad --layer counts --section-key sample --out results/
  spacrd predict --model my_model/ sample.zarr --table table --out results/
  spacrd predict --model my_model/ section.h5ad --regions --out results/
"""
TRAIN_EPILOG = """\
The model folder (model.pt, model.json; SpaCRD.save) is what `spacrd predict --model DIR` and
SpaCRD.load(DIR) read.

examples:
  spacrd train labelled.h5ad --labels-key cancer --section-key section --out my_model/
  spacrd train labelled.h5ad --labels-key label --cancer-categories "invasive cancer" "cancer in situ" \\
      --section-key section --out my_model/
  spacrd train spaceranger_run/outs --labels-file pathology.csv --labels-key Pathology \\
      --cancer-categories Tumor --histology --out my_model/
  spacrd train sample.zarr --table table --image he_image --labels-key cancer --out my_model/
  spacrd train section.h5ad --annotations A1.geojson --classes "Tumor=cancer,Stroma=non-cancer,Ignore*=none" \
      --annotations-section A1 --out my_model/
"""
DEMO_EPILOG = """\
Writes ctr.png, metrics.csv and spots.csv under --out; a few minutes on 2 CPU cores, offline.

examples:
  spacrd demo
  spacrd demo --held-out B1 --out demo_b1
"""
#: Exceptions that mean bad input: spacrd's checks raise these with messages that say what to fix.
INPUT_ERRORS = (InputError, ValueError, KeyError, TypeError, OSError, ImportError)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _wrap(text: str) -> str:
    """Descriptions wrapped as argparse would, since the raw formatter (for the epilogs) does not."""
    return textwrap.fill(text, width=88)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def _input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", type=Path, help=FORMATS_HELP)
    parser.add_argument(
        "--section-key",
        metavar="COLUMN",
        help="obs column naming each spot's section (default: the model's section column, or 'section' for "
        "train, when INPUT has it; else one section per SpatialData shapes element, or one section)",
    )
    parser.add_argument(
        "--layer",
        metavar="NAME",
        help="layer with the raw counts, or X for adata.X (default: the model's; X for a new model)",
    )
    parser.add_argument(
        "--table", metavar="NAME", help="SpatialData table of spots (default: 'table', or the only one)"
    )
    parser.add_argument(
        "--image", metavar="NAME", help="SpatialData image element, for models with histology"
    )
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")


def _annotation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--annotations",
        metavar="GEOJSON|ELEMENT",
        help="label the spots from annotated regions (spacrd.pp.labels_from_annotations): a QuPath GeoJSON "
        "export in full-resolution pixels, or a shapes element of a .zarr INPUT",
    )
    parser.add_argument(
        "--classes",
        metavar="NAME=cancer,...",
        help="what each annotation class means: cancer, non-cancer or none (ignored), e.g. "
        "Tumor=cancer,Stroma=non-cancer; every class in the file must be named",
    )
    parser.add_argument(
        "--annotations-section", metavar="NAME", help="the section the annotations were drawn on"
    )
    parser.add_argument(
        "--min-overlap",
        type=float,
        metavar="SHARE",
        help="assign a spot by the share of its footprint inside a class (default: by its centre)",
    )
    parser.add_argument(
        "--coordinate-system",
        metavar="NAME",
        help="for a .zarr INPUT: the coordinate system of the annotations (default 'global' or the only one)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``spacrd`` and its ``predict``, ``train`` and ``demo`` commands."""
    from spacrd import __version__
    from spacrd._demo import add_arguments as demo_arguments
    from spacrd._pretrained_registry import PRETRAINED_MODELS
    from spacrd._stages import STAGES

    parser = argparse.ArgumentParser(
        prog="spacrd",
        description="Cancer tissue regions (CTR) in spatial transcriptomics, from the command line.",
        epilog=MAIN_EPILOG,
        formatter_class=_formatter,
    )
    parser.add_argument("--version", action="version", version=f"spacrd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="cancer probability and call for every spot of INPUT",
        description=_wrap(
            "Give every spot of INPUT its cancer probability and a label-free cancer / non-cancer "
            "call (SpaCRD.predict), and write them with a figure. INPUT needs raw counts and spot "
            "coordinates, no labels."
        ),
        epilog=PREDICT_EPILOG,
        formatter_class=_formatter,
    )
    names = "; ".join(f"{m.name}: {m.summary}" for m in PRETRAINED_MODELS.values())
    predict.add_argument(
        "--model",
        default="her2st",
        metavar="NAME|DIR",
        help=f"a pretrained model ({names}) or a folder written by SpaCRD.save / spacrd train "
        "(default her2st)",
    )
    _input_options(predict)
    predict.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    predict.add_argument(
        "--min-gene-overlap",
        type=float,
        default=0.5,
        metavar="SHARE",
        help="smallest share of the model's genes INPUT must have (default 0.5)",
    )
    predict.add_argument(
        "--call",
        choices=["mixture", "auto", "source", "prior"],
        help="where the call's level comes from (default auto: each section's own scores where it is "
        "unlike the training sections or its scores form two populations far apart; see "
        "SpaCRD.predict's `call`)",
    )
    predict.add_argument(
        "--threshold",
        metavar="P|gmm",
        help="with --call prior (implied): call threshold on the prior-adapted probabilities (default 0.5)",
    )
    predict.add_argument(
        "--ranking-model",
        metavar="NAME|DIR",
        help="a second model (e.g. one trained with --section-scaling none) that orders the spots; "
        "--model keeps its probabilities and call share per section (SpaCRD.predict(ranking_model=...))",
    )
    predict.add_argument("--no-plot", action="store_true", help="do not draw ctr.png")
    predict.add_argument(
        "--regions",
        action="store_true",
        help="also write the called regions as regions.geojson (QuPath annotations), and for a .zarr as "
        "shapes element(s) 'ctr_regions'",
    )
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of a previous run in --out (its spots.csv, annotated.h5ad, ctr.png and "
        "regions.geojson, also those this run does not write); other files there are left alone",
    )
    _common(predict)
    predict.set_defaults(func=_predict)

    train = commands.add_parser(
        "train",
        help="train a model on labelled spots of INPUT",
        description=_wrap(
            "Train SpaCRD on the labelled spots of INPUT (SpaCRD.setup_anndata, train, save) and write "
            "the model folder."
        ),
        epilog=TRAIN_EPILOG,
        formatter_class=_formatter,
    )
    _input_options(train)
    train.add_argument(
        "--labels-key",
        metavar="COLUMN",
        help="column with the labels (required without --annotations; with it, the column written, "
        "default 'cancer')",
    )
    _annotation_options(train)
    train.add_argument(
        "--labels-file",
        type=Path,
        metavar="CSV",
        help="read the labels column from this CSV (first column: spot ids, e.g. a Loupe Browser export) "
        "instead of INPUT; spots it lacks are unlabelled",
    )
    train.add_argument(
        "--cancer-categories",
        nargs="+",
        metavar="VALUE",
        help="label values that mean cancer (default: the labels are bool, 0/1 or cancer/non-cancer)",
    )
    train.add_argument(
        "--histology",
        action="store_true",
        help="also train on H&E features (spacrd.pp.image_features on uns['spatial'] images)",
    )
    train.add_argument("--out", required=True, type=Path, metavar="MODEL_DIR", help="model folder to write")
    train.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    train.add_argument("--n-top-genes", type=int, default=2000, metavar="N", help="genes used (default 2000)")
    for spec in STAGES:
        train.add_argument(
            f"--{spec.name}-epochs",
            type=int,
            default=spec.epochs,
            metavar="N",
            help=f"epochs of {spec.title.split(':')[0].lower()} ({spec.name}; default {spec.epochs})",
        )
    train.add_argument(
        "--section-scaling",
        choices=list(SECTION_SCALINGS),
        default=SECTION_SCALINGS[0],
        help="per-section expression scaling (default zscore); 'none' trains a model to pass to "
        "spacrd predict --ranking-model",
    )
    train.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    _common(train)
    train.set_defaults(func=_train)

    demo = commands.add_parser(
        "demo",
        help="the README's cross-patient demo on the shipped HER2ST subset",
        description=_wrap(
            "Train on five labelled HER2ST patients, predict the sixth without its labels and report ROC "
            "AUC, average precision and F1 next to trivial baselines."
        ),
        epilog=DEMO_EPILOG,
        formatter_class=_formatter,
    )
    demo_arguments(demo)
    _common(demo)
    demo.set_defaults(func=_demo)
    return parser


def demo(argv: list[str] | None = None) -> int:
    """``spacrd-demo``: ``spacrd demo`` with ``argv`` (default: the command line); returns its exit code."""
    return main(["demo", *(sys.argv[1:] if argv is None else argv)])


def main(argv: list[str] | None = None) -> int:
    """Run ``spacrd`` with ``argv`` (default: the command line) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) and usage errors (2)
        return int(exit_.code or 0)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("spacrd: error: choose a command: predict, train or demo (spacrd --help)", file=sys.stderr)
        return 2
    name = f"spacrd {args.command}"
    try:
        from spacrd._console import quiet_libraries

        with quiet_libraries():
            args.func(args)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except INPUT_ERRORS as err:
        _report(name, "error", err, args.debug)
        return 2
    except Exception as err:
        _report(name, f"unexpected error ({type(err).__name__})", err, args.debug)
        return 1
    return 0


def _report(name: str, what: str, err: BaseException, debug: bool) -> None:
    from spacrd._cli_io import _first_line

    if debug:
        traceback.print_exception(err)
    hint = "" if debug else " (--debug shows the traceback)"
    print(f"{name}: {what}: {_first_line(err)}{hint if 'unexpected' in what else ''}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- commands


def _predict(args: argparse.Namespace) -> None:
    from spacrd import _cli_io
    from spacrd._cli_model import load_model, predict
    from spacrd._cli_outputs import PREDICT_OUTPUTS, check_out, created_folder, refuse_previous, remove_stale

    kind = _cli_io.input_kind(args.input)
    models = {"--model": Path(args.model), "--ranking-model": Path(args.ranking_model or "")}
    check_out(args.out, {"INPUT": args.input, **models}, PREDICT_OUTPUTS)
    previous = refuse_previous(args.out, PREDICT_OUTPUTS, args.overwrite)
    model = load_model(args.model, args.accelerator)
    loaded = _cli_io.read_input(args.input, args.table)
    section_key = predict(model, loaded, args)
    stem = _cli_io.input_stem(args.input)
    spots = _cli_io.spot_table(loaded.table, section_key, stem)
    with created_folder(args.out):
        written = _write_results(loaded, spots, section_key, args)
    removed = remove_stale(args.out, previous, written)
    called = int((spots.iloc[:, 2] == "cancer").sum())
    print(f"{len(spots)} spots, {called} called cancer ({called / max(len(spots), 1):.0%}).")
    if kind == "zarr":
        written.append(Path(f"{args.input} (table {loaded.table_key!r})"))
    print("Wrote " + ", ".join(map(str, written)))
    if removed:
        print(f"Removed the previous run's {', '.join(removed)} from {args.out} (--overwrite).")


def _write_results(loaded, spots, section_key: str | None, args: argparse.Namespace) -> list[Path]:
    """Write every output of ``predict`` or none: temporary files first, renamed together at the end.

    A zarr table is replaced last (:func:`spacrd._atomic.replace_table`), once the other outputs are
    complete, so that a failure leaves the store as it was.
    """
    from spacrd import _cli_io
    from spacrd._atomic import AtomicFiles, WriteError, replace_table

    files, out = AtomicFiles(), args.out
    try:
        files.write(out / "spots.csv", spots.to_csv)
        if loaded.kind != "zarr":
            _cli_io.write_annotated(loaded, files, out)
        if not args.no_plot:
            try:
                files.write(out / "ctr.png", lambda tmp: _cli_io.draw(loaded, section_key, tmp))
            except WriteError as err:
                cause = err.__cause__
                if isinstance(cause, OSError) or not isinstance(cause, KeyError | ValueError | ImportError):
                    raise
                print(f"warning: no ctr.png: {_cli_io._first_line(cause)}", file=sys.stderr)
        regions = _cli_io.called_regions(loaded, section_key) if args.regions else None
        if regions is not None:
            _cli_io.write_regions_file(regions, files, out)
        if loaded.kind == "zarr":
            replace_table(loaded.data, loaded.table_key)
            if regions is not None:
                _cli_io.write_regions_shapes(loaded)
        return files.commit()
    except WriteError as err:
        files.discard()
        kept = f"; {loaded.path} is unchanged" if loaded.kind == "zarr" else ""
        raise WriteError(f"{err}; nothing was written to {out}{kept}.") from err


def _train(args: argparse.Namespace) -> None:
    from spacrd._atomic import WriteError
    from spacrd._cli_io import input_kind
    from spacrd._cli_model import check_accelerator, train
    from spacrd._cli_outputs import check_out, created_folder
    from spacrd.model._io import MODEL_FILES

    check_accelerator(args.accelerator)
    if not 0 <= args.seed < 2**32:  # numpy's range of seeds
        raise InputError(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}.")
    input_kind(args.input)
    check_out(args.out, {"INPUT": args.input, "--labels-file": args.labels_file}, MODEL_FILES)
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise InputError(f"{args.out} exists and is not empty; pass --overwrite or choose another --out.")
    model = train(args)
    with created_folder(args.out):
        try:
            model.save(str(args.out), overwrite=True)
        except WriteError as err:
            raise WriteError(f"{err}; the model was not saved, {args.out} is as it was.") from err
    print(f"{model}\nWrote {args.out}/model.pt, {args.out}/model.json")


def _demo(args: argparse.Namespace) -> None:
    from spacrd._demo import SECTIONS, run_from_args

    if args.held_out not in SECTIONS:  # before the data are read and a model is trained
        raise InputError(f"--held-out must be one of {', '.join(SECTIONS)}, got {args.held_out!r}.")
    run_from_args(args)
