"""The ``aigc`` command. Each sub-command lives in its own module of this package and registers
itself with ``register(subparsers)``; sub-commands map onto the library modules one to one.

Errors a user can act on (:class:`aigc.errors.AigcError`) print as one line with exit code 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Order is the order of `aigc --help`.
COMMAND_MODULES = [
    "aigc.cli.data",
    "aigc.cli.train",
    "aigc.cli.tune",
    "aigc.cli.sample",
    "aigc.cli.generate",
    "aigc.cli.chat",
    "aigc.cli.assistant",
    "aigc.cli.finetune",
    "aigc.cli.music",
    "aigc.cli.evaluate",
    "aigc.cli.info",
    "aigc.cli.kernels",
    "aigc.cli.feedback",
    "aigc.cli.improve",
    "aigc.cli.models",
    "aigc.cli.sentiment",
    "aigc.cli.monitor",
    "aigc.cli.demo",
    "aigc.cli.studio",
    "aigc.cli.worker",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigc",
        description="Self-hosted generative content: train generative models on your own data, "
        "generate images, text and music, and measure what they make.",
        epilog="Run `aigc COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from aigc import allocator
    from aigc.cli._common import check_seed_flag
    from aigc.errors import AigcError

    # freed memory stays in the process: `aigc train` steps 1.01-1.06x, sampling 1.10-1.22x
    # (aigc.allocator; AIGC_KEEP_FREED_MEMORY=0 leaves glibc as it is)
    allocator.keep_freed_memory()
    try:
        check_seed_flag(args)
        _join_torchrun(args)
        result = args.func(args)
    except AigcError as exc:
        if args.debug or os.environ.get("AIGC_DEBUG"):
            raise
        print(f"aigc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aigc: interrupted; checkpoints already written are intact", file=sys.stderr)
        return 130
    finally:
        from aigc.distributed import shutdown

        shutdown()
    return int(result or 0)


# Commands that know how to split their work under `torchrun` (docs/scale-out.md).
TORCHRUN_COMMANDS = ("train", "finetune", "sample", "eval")


def _join_torchrun(args: argparse.Namespace) -> None:
    """Under torchrun (WORLD_SIZE > 1): join the process group and silence stdout off rank 0."""
    from aigc.distributed import env_world_size, init_from_env
    from aigc.errors import ConfigError

    if env_world_size() == 1:
        return
    if args.command not in TORCHRUN_COMMANDS:
        raise ConfigError(f"`aigc {args.command}` does not run under torchrun (WORLD_SIZE="
                          f"{env_world_size()}); commands that do: {', '.join(TORCHRUN_COMMANDS)}")
    ctx = init_from_env(getattr(args, "device", None) or "auto")
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
