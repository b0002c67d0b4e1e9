"""Command line: ``python -m parity run ...`` (see ``python -m parity --help``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from port.atomic import write_text_atomic
from port.command import (
    Exit,
    Tool,
    ToolParser,
    add_caffemodel,
    add_definition_options,
    add_out,
    add_prototxt,
    check_output_dir,
    check_output_file,
    comma_list,
)
from port.errors import UsageError
from port.paths import cache_root
from port.plugins import load_plugins

from . import tolerance
from .report import format_table, render_html
from .run import ALL_REFERENCES, ParitySetupError, resolve, run_parity, worst_heatmap
from .verdict import write_verdict


def _golden_arg(s: str) -> tuple[str, str]:
    blas, sep, path = s.partition("=")
    if not sep or blas not in ("atlas", "openblas"):
        raise argparse.ArgumentTypeError("expected atlas=FILE.npz or openblas=FILE.npz")
    return blas, path


def build_tool() -> Tool:
    """The ``python -m parity`` command line (subcommands run, all, machines, policy)."""
    tool = Tool(
        "parity",
        "Layer-by-layer parity of the PyTorch port against real Caffe, numpy and ONNX Runtime.",
    )
    _add_run_command(tool)
    _add_all_command(tool)
    _add_machines_command(tool)
    _add_policy_command(tool)
    return tool


def _add_run_command(tool: Tool) -> None:
    """``parity run``: one model (built-in or a user's own) against the chosen references."""
    parser = tool.add_command(
        "run",
        _cmd_run,
        help="run the port and the references, compare blob by blob, report; exit 0 only if all pass",
        description="Run the port (float32 fast, float32 accurate = float64 accumulation, float64) "
        "and the references on one input, forward and backward, and judge every blob by the policy "
        "in parity/tolerance.py; both float32 configurations are judged and the verdict records "
        "each. Exit status: 0 every blob passed, 1 some blob failed, 2 the run could not be set up.",
    )
    _add_run_subject_options(parser)
    parser.add_argument(
        "--artefact",
        help="judge this `port export` artefact (.py, .pt2 or .onnx) in the port's place",
    )
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="regenerate missing cached goldens with real Caffe",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="drop Caffe references whose goldens are missing (the report says so) instead of failing",
    )
    parser.add_argument(
        "--no-local", action="store_true", help="skip the layer-alone (local) analysis"
    )
    parser.add_argument("--json", help="write the JSON result here (schema: parity/SCHEMA.md)")
    parser.add_argument("--html", help="write the self-contained HTML report here")
    parser.add_argument("--quiet", action="store_true", help="print only the verdict line")
    parser.add_argument(
        "--no-verdict",
        action="store_true",
        help="do not write the verdict file MFV's parity gate reads (<caffemodel>.parity.json, or "
        "cache/parity/<stem>.seed<N>.parity.json for seeded weights)",
    )
    parser.add_argument(
        "--verdict-file", help="write the verdict file here instead of its default place"
    )


def _add_run_subject_options(parser: ToolParser) -> None:
    """``parity run``'s options that say what is checked: the net, its weights, the references,
    the goldens and their input, and where the backward pass starts."""
    parser.add_argument(
        "--model",
        help="built-in model name (port.zoo), e.g. caffenet; 'all' runs every model with goldens, "
        "regenerating missing cached goldens (as `parity all --regenerate`; --json/--html then name "
        "a folder for <model>.json/.html)",
    )
    add_prototxt(parser, default="--model's; give one of the two")
    add_definition_options(parser)
    add_caffemodel(parser, default="the goldens' weights, else seeded")
    parser.add_argument(
        "--references",
        type=comma_list(ALL_REFERENCES),
        default=list(ALL_REFERENCES),
        help=f"comma-separated subset of {','.join(ALL_REFERENCES)} (default: all)",
    )
    parser.add_argument(
        "--golden",
        action="append",
        type=_golden_arg,
        default=[],
        metavar="BLAS=FILE",
        help="golden dump for --prototxt models (atlas=... and/or openblas=...), from "
        "`legacy_caffe goldens`, pycaffe or `port dump`; its input is the run's input",
    )
    parser.add_argument(
        "--input-set",
        dest="input_name",
        help="which golden input set of a built-in model (default: the manifest's first)",
    )
    parser.add_argument(
        "--backward-from", help="BLOB:UNIT (default: the goldens', else the classifier, unit 945/0)"
    )


def _add_all_command(tool: Tool) -> None:
    """``parity all``: every built-in model with goldens (or those named), one summary line each."""
    parser = tool.add_command(
        "all",
        _cmd_all,
        help="run every built-in model that has goldens; one summary line each; exit 0 only if all pass",
        description="Run `parity run` for every built-in model with a golden manifest (or those named) "
        "and print each model's worst error as a multiple of its noise floor.",
    )
    parser.add_argument(
        "--model",
        type=comma_list(),
        help="comma-separated model names (default: every model with goldens)",
    )
    parser.add_argument(
        "--regenerate",
        action="store_true",
        help="regenerate missing cached goldens with real Caffe",
    )
    parser.add_argument(
        "--allow-missing", action="store_true", help="drop Caffe builds whose goldens are missing"
    )
    add_out(parser, "folder for <model>.json and <model>.html", required=False)
    parser.add_argument(
        "--no-local", action="store_true", help="skip the layer-alone (local) analysis"
    )
    parser.add_argument(
        "--no-verdict", action="store_true", help="do not write MFV's verdict files"
    )


def _add_machines_command(tool: Tool) -> None:
    """``parity machines``: parity under every emulated CPU kernel path (the machine matrix)."""
    parser = tool.add_command(
        "machines",
        _cmd_machines,
        help="parity under every emulated CPU kernel path (the machine matrix); exit 0 only if "
        "every target passes under every setting",
        description="Run parity for each target in a fresh process per setting: oneDNN/MKL/ATen "
        "capped to AVX2, AVX or SSE4 with 1 and 2 threads, MKL's compatible GEMM, and convolutions "
        "without oneDNN (parity/machines.py says which knobs change kernels and why). Regenerates "
        "missing cached goldens with real Caffe.",
    )
    parser.add_argument(
        "--model",
        type=comma_list(),
        help="comma-separated built-in models and/or case folders (deploy.prototxt + goldens/; "
        "default: every built-in model and every tests/data case)",
    )
    parser.add_argument(
        "--settings",
        type=comma_list(),
        help="comma-separated setting names (default: all; `--settings list` prints them)",
    )
    parser.add_argument("--json", help="write every row as JSON here")
    parser.add_argument("--markdown", help="write the matrix as a Markdown table here")


def _add_policy_command(tool: Tool) -> None:
    """``parity policy``: the tolerance policy's constants as JSON."""
    tool.add_command("policy", _cmd_policy, help="print the tolerance policy constants as JSON")


def _cmd_policy(args: argparse.Namespace) -> int:
    print(json.dumps(tolerance.policy_json(), indent=1))
    return Exit.OK


def _cmd_machines(args: argparse.Namespace) -> int:
    from . import machines

    if args.settings == ["list"]:
        for s in machines.SETTINGS:
            print(f"{s.name:15s} {s.what}; env {s.env or '{}'}")
        return Exit.OK
    settings = list(machines.SETTINGS)
    if args.settings:
        known = {s.name: s for s in settings}
        unknown = [n for n in args.settings if n not in known]
        if unknown:
            raise UsageError(f"unknown setting(s) {unknown}; choose from {', '.join(known)}")
        settings = [known[n] for n in args.settings]
    if args.model:
        targets = [machines.Target.parse(t) for t in args.model]
    else:
        targets = machines.default_targets()
    rows = machines.run_matrix(settings, targets, progress=lambda line: print(line, flush=True))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1) + "\n")
    table = machines.markdown(rows)
    if args.markdown:
        write_text_atomic(args.markdown, table + "\n")
    print(table)
    bad = [r for r in rows if not r.get("passed")]
    print(f"machine matrix: {len(rows) - len(bad)} of {len(rows)} runs pass")
    return Exit.CHECK_FAILED if bad else Exit.OK


def _cmd_all(args: argparse.Namespace) -> int:
    if args.out:
        check_output_dir(args.out)
    return _run_all(
        args.model,
        regenerate=args.regenerate,
        allow_missing=args.allow_missing,
        out=args.out,
        no_local=args.no_local,
        no_verdict=args.no_verdict,
    )


def _check_run_outputs(args: argparse.Namespace) -> None:
    """Every output of ``parity run`` checked before the run: one bad path, nothing written."""
    if args.model == "all":
        for option, path in (("--json", args.json), ("--html", args.html)):
            if path:
                check_output_dir(path, option=option)
        return
    for option, path in (
        ("--json", args.json),
        ("--html", args.html),
        ("--verdict-file", None if args.no_verdict else args.verdict_file),
    ):
        if path:
            check_output_file(path, option=option)


def _cmd_run(args: argparse.Namespace) -> int:
    _check_run_outputs(args)
    if args.model == "all" and args.artefact:
        raise UsageError("--artefact judges one model's artefact: name the model")
    if args.model == "all":
        return _run_all(
            None,
            regenerate=True,
            allow_missing=args.allow_missing,
            out=args.json or args.html,
            no_local=args.no_local,
            no_verdict=args.no_verdict,
        )
    if (args.model is None) == (args.prototxt is None):
        raise UsageError("give exactly one of --model NAME and --prototxt P")
    if args.model is not None and (args.proto or args.plugin):
        raise UsageError("--proto and --plugin go with --prototxt (a user's own model)")
    load_plugins(args.plugin)
    t0 = time.perf_counter()
    setup = resolve(
        model=args.model,
        prototxt=args.prototxt,
        caffemodel=args.caffemodel,
        references=args.references,
        golden_files=dict(args.golden),
        input_name=args.input_name,
        backward_from=args.backward_from,
        regenerate=args.regenerate,
        allow_missing=args.allow_missing,
        proto=args.proto,
    )
    references = _without_unknown_numpy(setup, args.references)
    if args.artefact:
        from .artefact_runner import run_artefact_parity

        result, outputs = run_artefact_parity(
            setup, args.artefact, references=references, local_check=not args.no_local
        )
        # The default verdict file vouches for the weights as the port runs them, not an artefact.
        args.no_verdict = args.no_verdict or not args.verdict_file
    else:
        result, outputs = run_parity(setup, references=references, local_check=not args.no_local)
    result.timings["total"] = round(time.perf_counter() - t0, 4)
    _save(result, setup, args.json, no_verdict=args.no_verdict, verdict_file=args.verdict_file)
    if args.html:
        write_text_atomic(args.html, render_html(result, worst_heatmap(result, outputs)))
    if args.quiet:
        print(f"parity {result.model}: {'PASS' if result.passed else 'FAIL'}")
    else:
        print(format_table(result))
    return Exit.OK if result.passed else Exit.CHECK_FAILED


def _without_unknown_numpy(setup, references: Sequence[str]) -> list[str]:
    """``references`` less the numpy reference where it lacks a layer type of the net (a custom
    layer nobody gave it with ``parity.numpy_ref.register``); the report's notes say so."""
    from . import numpy_ref

    missing = numpy_ref.missing_layers(setup.netdef)
    if not missing:
        return list(references)
    dropped = [r for r in references if r.startswith("numpy")]
    if dropped:
        setup.notes.append(
            f"{', '.join(dropped)} not run: the numpy reference has no function for layer(s) "
            f"{', '.join(missing)} (custom types; see parity.numpy_ref.register); the local "
            "check leaves those layers out"
        )
    return [r for r in references if not r.startswith("numpy")]


def _run_all(
    models: list[str] | None,
    *,
    regenerate: bool,
    allow_missing: bool,
    out: str | None,
    no_local: bool,
    no_verdict: bool,
) -> int:
    """``parity all`` and ``parity run --model all``: one summary line per model."""
    from port.zoo import MODELS

    from .report import summary_line

    if not models:
        # Every model the golden plan covers: one without goldens is a failure to report, not skip.
        from legacy_caffe.goldens import PLANS

        models = [m for m in MODELS if m in PLANS]
    ok = True
    for m in models:
        t0 = time.perf_counter()
        try:
            setup = resolve(model=m, regenerate=regenerate, allow_missing=allow_missing)
            result, outputs = run_parity(setup, local_check=not no_local)
        except ParitySetupError as exc:
            print(f"{m}: cannot run: {exc}")
            ok = False
            continue
        result.timings["total"] = round(time.perf_counter() - t0, 4)
        ok &= result.passed
        folder = Path(out) if out else None
        _save(result, setup, str(folder / f"{m}.json") if folder else None, no_verdict=no_verdict)
        if folder:
            write_text_atomic(
                folder / f"{m}.html", render_html(result, worst_heatmap(result, outputs))
            )
        print(summary_line(result), flush=True)
    return 0 if ok else 1


def _save(result, setup, json_path, *, no_verdict: bool, verdict_file: str | None = None) -> None:
    """Write the JSON report (if asked, or for the verdict) and the verdict file MFV's gate reads."""
    if not no_verdict and not json_path:
        # The verdict must point at a report; keep one in the (git-ignored) cache.
        json_path = str(cache_root() / "parity" / f"{result.model}.json")
    if json_path:
        write_text_atomic(json_path, result.dumps() + "\n")
    if not no_verdict:
        vf = write_verdict(
            result,
            prototxt=setup.prototxt,
            caffemodel=setup.caffemodel,
            seed=setup.seed,
            report=json_path,
            path=verdict_file,
        )
        result.notes.append(f"verdict: {vf}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m parity`` with ``argv``; returns the exit status (:class:`port.command.Exit`)."""
    return build_tool().main(argv)


if __name__ == "__main__":
    sys.exit(main())
