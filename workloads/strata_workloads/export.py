"""Write a trained model as a Hugging Face directory: `python -m strata_workloads.export --checkpoint DIR --out DIR`.

The checkpoint's weights (a step folder, or a root's newest complete checkpoint, as serving loads them) on the shape
of `--model-dir` (the Hugging Face directory the run started from) or of the preset `--model`, saved by
`hf_checkpoint.save_hf_model_dir`; the model_dir's tokenizer files are copied beside them, so `transformers` and
`python -m strata_workloads.serve --model-dir OUT` open the result. Exit codes as training's: 2 for a bad
configuration, 3 when no checkpoint loads.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from strata_api.workload import ExitCode
from strata_workloads.checkpoint import CorruptCheckpoint, NoUsableCheckpoint
from strata_workloads.hf_checkpoint import save_hf_model_dir
from strata_workloads.inference import load_model
from strata_workloads.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE

log = logging.getLogger("strata_workloads.export")


def export(checkpoint: Path, out: Path, model: str = "debug-llama", model_dir: str = "") -> None:
    """Raises ValueError (a shape with no Hugging Face equivalent, a bad model_dir) or the checkpoint errors."""
    loaded = load_model(model, checkpoint, model_dir)
    save_hf_model_dir(out, loaded.config, loaded.state_dict())
    for name in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE):
        if model_dir and (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_workloads.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="step folder or checkpoint root")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
    parser.add_argument("--model-dir", default="", help="the Hugging Face directory the run started from")
    parser.add_argument("--model", default="debug-llama", help="the run's preset (without --model-dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export(Path(args.checkpoint), Path(args.out), args.model, args.model_dir)
    except (ValueError, KeyError, FileNotFoundError) as err:
        log.error("invalid configuration: %s", err)
        return ExitCode.INVALID_CONFIGURATION
    except (CorruptCheckpoint, NoUsableCheckpoint) as err:
        log.error("no usable checkpoint: %s", err)
        return ExitCode.NO_USABLE_CHECKPOINT
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
