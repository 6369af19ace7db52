"""``lowbit-asr <command> [hydra overrides]``: one entry point, one module per command."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
"""The Hydra configs. In the repository ``src/lowbit_asr/conf`` is a link to the top-level
``conf/`` (where users read and edit them); a wheel carries the files themselves, so a
non-editable install finds them too."""

COMMANDS: dict[str, tuple[str, str]] = {
    "size": ("lowbit_asr.commands.size", "per-tensor size table of a model under a quantizer"),
    "allocate": ("lowbit_asr.commands.allocate", "quantizer config for a size budget (milp)"),
    "ptq": ("lowbit_asr.commands.ptq", "post-training quantization of a float checkpoint"),
    "train": ("lowbit_asr.commands.train", "train a Conformer RNN-T (float or QAT) with Hydra"),
    "transcribe": ("lowbit_asr.commands.transcribe", "text of audio files (packed file or ckpt)"),
    "evaluate": ("lowbit_asr.commands.evaluate", "WER and real-time factor of a checkpoint"),
    "export": ("lowbit_asr.commands.export", "pack a checkpoint into its low-bit file (.lbq)"),
    "frontier": ("lowbit_asr.commands.frontier", "size-vs-WER Pareto front of a sweep directory"),
    "compare": ("lowbit_asr.commands.compare", "paired significance test of two evaluations"),
    "reproduce": ("lowbit_asr.commands.reproduce", "data -> float -> QAT grid -> frontier"),
    "corpus": ("lowbit_asr.commands.corpus", "generate the embedded TTS corpus (LibriSpeech)"),
}


def hydra_overrides() -> list[str]:
    """The command-line overrides of the running Hydra app ([] outside one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def _usage() -> str:
    lines = ["usage: lowbit-asr <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Hydra commands take overrides, e.g.: lowbit-asr size quantizer=int2_asym_g16"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch to the command's own ``main`` with the remaining arguments."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lowbit-asr: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    # Hydra and argparse read sys.argv: present the command as its own script. Lightning's DDP
    # launcher re-runs sys.argv for the other ranks, so argv[0] must be a runnable file.
    sys.argv = [str(module.__file__), *rest]
    status = module.main()
    if isinstance(status, int) and status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
