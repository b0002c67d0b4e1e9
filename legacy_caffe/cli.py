"""``python -m legacy_caffe``: build the Caffe root, run in it, report on it, make goldens."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from port.command import Exit, Tool, comma_list
from port.errors import UsageError

from . import args as check
from . import engines, rootfs
from .manifest import write_json

EPILOG = """\
typical use:
  python -m legacy_caffe build                       # once per machine, ~2 min, ~1.1 GB
  python -m legacy_caffe doctor                      # Caffe version, BLAS, package versions
  python -m legacy_caffe run --blas atlas -- python3 -c 'import caffe'
  python -m legacy_caffe goldens                     # every built-in model, both BLAS
  python -m legacy_caffe goldens --check             # regenerate and compare with golden/
  python -m legacy_caffe mfv-reference --blas atlas --update-golden   # the original MFV loop
  python -m legacy_caffe goldens --prototxt deploy.prototxt --caffemodel w.caffemodel \\
      --input my.jpg --out my_goldens/

engines (--engine, or LEGACY_CAFFE_ENGINE): auto (default: podman, then docker, then chroot as
root), podman (rootless too), docker (the docker CLI; DOCKER_HOST may be Podman's API service),
chroot (the debootstrap root; needs root).

environment: LEGACY_CAFFE_ENGINE, LEGACY_CAFFE_ROOT (root folder), LEGACY_CAFFE_EXCHANGE (folder
bound at /exchange), LEGACY_CAFFE_MIRROR (Debian mirror; default: the one this machine's apt uses),
LEGACY_CAFFE_BASE / LEGACY_CAFFE_BASE_TAR (the image's Debian 11 base), LEGACY_CAFFE_RUNTIME,
LEGACY_CAFFE_RUN_ARGS, LEGACY_CAFFE_BUILD_ARGS (engine flags instead of the probed ones).
"""


def _add_engine(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=engines.ENGINE_CHOICES,
        default=None,
        help="where Caffe runs (default: $LEGACY_CAFFE_ENGINE or auto)",
    )


def _add_goldens(tool: Tool) -> None:
    from .goldens import DEFAULT_SEED, PLANS

    g = tool.add_command(
        "goldens", _cmd_goldens,
        help="write golden blob dumps (data and diff of every blob) from real Caffe",
        description="Built-in models: seed weights with `python -m port seed-weights`, run real "
        "Caffe with each BLAS on skimage photos, write golden/<model>/manifest.json and the dumps. "
        "With --prototxt/--caffemodel: the same for a user's own model into --out.",
    )  # fmt: skip
    g.add_argument(
        "--model",
        type=comma_list(sorted(PLANS)),
        metavar="NAME[,NAME...]",
        help=f"built-in models, comma-separated, of {', '.join(PLANS)} (default: all)",
    )
    g.add_argument(
        "--blas",
        type=comma_list(rootfs.BLAS_CHOICES),
        default=list(rootfs.BLAS_CHOICES),
        metavar="BLAS[,BLAS]",
        help="comma-separated (default: atlas,openblas)",
    )
    g.add_argument("--check", action="store_true", help="regenerate and compare with golden/")
    g.add_argument(
        "--fill-cache",
        action="store_true",
        help="regenerate missing cache dumps and verify them against the manifests",
    )
    g.add_argument(
        "--weight-seed",
        dest="seed",
        type=int,
        default=None,
        help=f"seed of the seeded weights (default: the model's plan, {DEFAULT_SEED} for most)",
    )
    g.add_argument("--no-repeat", action="store_true", help="skip the determinism re-run")
    _add_user_model(g)


def _add_user_model(g: argparse.ArgumentParser) -> None:
    """The options of ``goldens`` for a user's own model."""
    from .goldens import DEFAULT_UNIT

    g.add_argument("--prototxt", type=Path, help="a user's own net definition")
    g.add_argument("--caffemodel", type=Path, help="the user's weights (with --prototxt)")
    g.add_argument(
        "--input",
        action="append",
        metavar="IMAGE",
        help="image file for a user model (repeatable: one batch of all of them; "
        "default: skimage's astronaut)",
    )
    g.add_argument(
        "--input-arrays",
        type=Path,
        metavar="NPZ",
        help="instead of images: an .npz of input blob name -> array (any shape), "
        "fed as they are (nets with several or non-image inputs)",
    )
    g.add_argument(
        "--blob",
        default="auto",
        help="blob the one-hot is seeded on for a user model (default: auto, the last "
        "blob no layer consumes)",
    )
    g.add_argument(
        "--unit",
        type=int,
        default=DEFAULT_UNIT,
        help=f"flat index of the one-hot in --blob (default {DEFAULT_UNIT})",
    )
    g.add_argument("--out", type=Path, help="output folder for a user model")
    g.add_argument(
        "--python-path",
        type=Path,
        metavar="DIR",
        help="folder of the Python layers' modules (python_param module) a user model "
        "imports; put on the root's PYTHONPATH (with --prototxt)",
    )
    g.add_argument(
        "--no-force-backward",
        action="store_true",
        help="user model: make --blob a loss instead of adding force_backward (for "
        "Embed, Filter, BatchReindex, whose bottoms force_backward makes Caffe abort)",
    )


def _add_mfv_reference(tool: Tool) -> None:
    m = tool.add_command(
        "mfv-reference", _cmd_mfv_reference,
        help="run the original MFV loop (inside/mfv_original.py) on real Caffe for seeded CaffeNet",
        description="The published mean-image schedule on real Caffe from the class-945 mean images "
        "(shared/reference/mfv-original), seeded CaffeNet weights of the goldens. Writes "
        "facet_<k>_octave<j>.png, facet_<k>.png and trace.json (mfv visualize's format) into --out; "
        "with --update-golden, into golden/mfv/<blas>/ and refreshes golden/mfv/manifest.json.",
    )  # fmt: skip
    m.add_argument("--blas", choices=rootfs.BLAS_CHOICES, required=True, help="the Caffe build")
    m.add_argument(
        "--facets",
        type=comma_list(item=int),
        default=[0, 1, 2],
        metavar="K[,K...]",
        help="mean images to start from, comma-separated (default 0,1,2)",
    )
    m.add_argument("--unit", type=int, default=945, help="target unit of fc8 (default 945)")
    m.add_argument(
        "--seed", type=int, default=1, help="seed of the global NumPy stream (default 1)"
    )
    m.add_argument(
        "--caffemodel", type=Path, help="weights (default: the goldens' seeded CaffeNet)"
    )
    m.add_argument("--max-octaves", type=int, help="stop after this many octaves (tests)")
    dest = m.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", type=Path, help="output folder")
    dest.add_argument(
        "--update-golden",
        "--golden",
        dest="golden",
        action="store_true",
        help="write golden/mfv/<blas>/ and refresh golden/mfv/manifest.json (--golden "
        "is the older spelling)",
    )


def build_tool() -> Tool:
    """The ``python -m legacy_caffe`` command line (see :mod:`port.command` for the shared contract)."""
    tool = Tool(
        "legacy_caffe",
        "Real Caffe 1.0 (Debian 11, CPU) with ATLAS or OpenBLAS, and golden dumps from it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        sigterm=True,  # a running build step is stopped and mounts are released
    )
    b = tool.add_command(
        "build", _cmd_build,
        help="build the Caffe environment: the engine's image, or the debootstrap root (idempotent)",
    )  # fmt: skip
    b.add_argument("--force", action="store_true", help="rebuild even if it is complete")
    r = tool.add_command(
        "run", _cmd_run,
        help="run a command inside the environment with a chosen BLAS",
        description="Run CMD inside. The project's exchange folder is at /exchange and "
        "legacy_caffe/inside/ at /opt/legacy_caffe/inside (read-only).",
    )  # fmt: skip
    r.add_argument(
        "--blas",
        choices=rootfs.BLAS_CHOICES,
        default="openblas",
        help="the Caffe build (default openblas)",
    )
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    d = tool.add_command(
        "doctor", _cmd_doctor,
        help="report the engine (and the flags it needs here), Caffe version, BLAS, packages",
    )  # fmt: skip
    _add_goldens(tool)
    tool.add_command(
        "list", _cmd_list, help="list the golden sets the manifests describe, and which are on disk"
    )
    _add_mfv_reference(tool)
    for parser in (b, r, d, tool.parsers["goldens"], tool.parsers["mfv-reference"]):
        _add_engine(parser)
    return tool


def _cmd_build(args: argparse.Namespace) -> int:
    engine = engines.use(args.engine)
    print(json.dumps(engine.build(force=args.force), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UsageError("nothing to run: python -m legacy_caffe run --blas B -- CMD...")
    engine = engines.use(args.engine)
    engine.ensure_built()
    return engine.run(cmd, blas=args.blas, check=False).returncode


def _doctor_header(engine: engines.Engine) -> bool:
    """Print what the engine is and how it is built; False when there is nothing built to ask."""
    if engine.name == "chroot":
        root = rootfs.root_dir()
        info = rootfs.marker_info(root)
        print(f"engine:    chroot, root {root}")
        if info is None:
            partial = root.exists() or root.with_name(root.name + ".partial").exists()
            print(f"state:     {'half-built' if partial else 'absent'}; build it with: "
                  "python -m legacy_caffe build --engine chroot")  # fmt: skip
            return False
        print(f"built:     {info['built_at']} from {info['mirror']} ({info['suite']})")
        print(f"timings:   {info.get('timings')}")
        print(f"disk:      {rootfs.disk_usage(root) / 1024**3:.2f} GiB")
        return True
    if not engine.is_built():
        print(f"engine:    {engine.name}; no image {engine.image_tag()}; build it with: "
              f"python -m legacy_caffe build --engine {engine.name}")  # fmt: skip
        return False
    engine.quirks()
    desc = engine.describe()
    print(f"engine:    {desc['name']} ({desc['cli']}){', rootless' if desc['rootless'] else ''}")
    print(f"image:     {desc['image']} {desc['image_id']}")
    q = desc["quirks"]
    print(f"quirks:    global {q.get('global')} run {q.get('run')} build {q.get('build')} "
          f"({q.get('how')})")  # fmt: skip
    return True


def _cmd_doctor(args: argparse.Namespace) -> int:
    engine = engines.use(args.engine)
    if not _doctor_header(engine):
        return Exit.CHECK_FAILED
    status = Exit.OK
    env: dict = {}
    for blas in rootfs.BLAS_CHOICES:
        proc = engine.run(
            ["python3", f"{rootfs.INSIDE_MOUNT}/doctor.py"], blas=blas, capture=True, check=False
        )
        if proc.returncode != 0:
            print(f"[{blas}] FAILED: {proc.stdout}{proc.stderr}")
            status = Exit.CHECK_FAILED
            continue
        env = json.loads(proc.stdout)
        ok = env["blas"] == blas
        status = status if ok else Exit.CHECK_FAILED
        print(f"[{blas}] caffe {env['caffe']}, python {env['python']}, numpy {env['numpy']}, "
              f"debian {env['debian']}")  # fmt: skip
        print(
            f"[{blas}] BLAS loaded: {', '.join(env['blas_loaded'])}" + ("" if ok else "  <-- WRONG")
        )
        if env.get("openblas"):
            print(f"[{blas}] OpenBLAS: {env['openblas']}")
    print("packages:")
    for name, version in env.get("packages", {}).items():
        print(f"  {name:24s} {version or 'NOT INSTALLED'}")
    return status


def _user_model_inputs(args: argparse.Namespace) -> object:
    """Check a user model's files and arguments and load its inputs; nothing is built yet."""
    from . import goldens

    if not (args.prototxt and args.caffemodel):
        raise UsageError("a user model needs both --prototxt and --caffemodel")
    if args.model or args.check or args.fill_cache:
        raise UsageError(
            "--prototxt/--caffemodel cannot be combined with --model, --check or --fill-cache"
        )
    if args.input_arrays is not None and args.input:
        raise UsageError("give --input (images) or --input-arrays, not both")
    check.readable_file(args.prototxt, "--prototxt")
    check.readable_file(args.caffemodel, "--caffemodel")
    for image in args.input or []:
        check.readable_file(Path(image), "--input")
    check.readable_file(args.input_arrays, "--input-arrays")
    check.python_folder(args.python_path)
    check.output_folder(args.out)
    check.blob_in_prototxt(args.blob, args.prototxt)
    check.non_negative(args.unit, "--unit")
    if args.input_arrays is not None:
        return goldens.array_inputs(args.input_arrays)
    size = goldens.declared_input_size(args.prototxt.read_text(errors="replace"))
    return goldens.user_inputs(args.input, size) if args.input else [goldens.ASTRONAUT]


def _cmd_user_goldens(args: argparse.Namespace) -> int:
    from . import goldens
    from .generation import GoldenRequest, generate

    inputs = _user_model_inputs(args)
    out = args.out or (goldens.CACHE_DIR / f"user-{args.prototxt.stem}")
    engines.use(args.engine)
    man = generate(GoldenRequest(
        name=args.prototxt.stem, prototxt=args.prototxt, prototxt_ref=str(args.prototxt),
        blob=args.blob, unit=args.unit, inputs=inputs, blas=tuple(args.blas),
        caffemodel=args.caffemodel, seed=None, out_committed=out, out_cache=out,
        repeat=not args.no_repeat, force_backward=not args.no_force_backward,
        python_path=args.python_path,
    ))  # fmt: skip
    write_json(out / "manifest.json", man)
    print(f"wrote {out}/manifest.json and {len(man['sets'])} dumps under {out}")
    return 0


def _cmd_goldens(args: argparse.Namespace) -> int:
    from . import goldens

    if args.prototxt or args.caffemodel:
        return _cmd_user_goldens(args)
    if args.input or args.out or args.input_arrays or args.python_path:
        raise UsageError(
            "--input, --input-arrays, --out and --python-path go with --prototxt/--caffemodel (a "
            "user's own model)"
        )
    check.non_negative(args.unit, "--unit")
    models = args.model or list(goldens.PLANS)
    engines.use(args.engine)
    blas = args.blas
    if args.check:
        problems = []
        for m in models:
            problems += goldens.check_model(m, blas=blas)
        for p in problems:
            print(f"MISMATCH {p}")
        print("check: " + ("OK" if not problems else f"{len(problems)} problem(s)"))
        return Exit.CHECK_FAILED if problems else Exit.OK
    if args.fill_cache:
        for m in models:
            missing = [g for g in goldens.list_goldens(m) if not g.available and g.blas in blas]
            for g in missing:
                goldens.load_golden(m, g.blas, g.input, regenerate=True)
                print(f"regenerated and verified {g.path}")
        return 0
    for m in models:
        goldens.generate_model(m, blas=blas, seed=args.seed, repeat=not args.no_repeat)
    return 0


def _cmd_mfv_reference(args: argparse.Namespace) -> int:
    from . import mfv_reference

    check.readable_file(args.caffemodel, "--caffemodel")
    check.output_folder(args.out)
    for k in args.facets:
        check.non_negative(k, "--facets")
        check.readable_file(mfv_reference.MEANS_DIR / f"mean_{k}.jpg", "--facets")
    check.non_negative(args.unit, "--unit")
    out = mfv_reference.GOLDEN_MFV / args.blas if args.golden else args.out
    engines.use(args.engine).ensure_built()
    trace = mfv_reference.generate_reference(
        out, blas=args.blas, facets=args.facets, unit=args.unit, seed=args.seed,
        caffemodel=args.caffemodel, max_octaves=args.max_octaves,
    )  # fmt: skip
    if args.golden:
        mfv_reference.write_manifest()
    for f in trace["facets"]:
        print(f"facet {f['index']} ({f['init']}): {f['seconds']:.0f} s, "
              f"final activation {f['final_activation']:.4g}")  # fmt: skip
    print(f"wrote {out}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .goldens import list_goldens

    for g in list_goldens():
        where = "git" if g.committed else "cache"
        state = "present" if g.available else "missing"
        print(f"{g.model:14s} {g.blas:9s} {g.input:14s} {str(g.shape):18s} {where:5s} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return build_tool().main(argv)
