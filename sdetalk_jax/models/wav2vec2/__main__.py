"""`python -m sdetalk_jax.models.wav2vec2 --checkpoint DIR --audio A.wav --out H.npy`

Writes the last hidden states [frames, hidden] of one audio file (any sample rate or channel count).
"""

from __future__ import annotations

import os
import sys

from sdetalk_jax import cli
from sdetalk_jax.audio import AudioError
from sdetalk_jax.fileio import write_npy
from sdetalk_jax.models.wav2vec2.convert import CheckpointError
from sdetalk_jax.models.wav2vec2.encoder import ContextEncoder


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m sdetalk_jax.models.wav2vec2", __doc__)
    parser.add_argument(
        "--checkpoint", required=True, help="HF folder (config.json + weights) or hub name"
    )
    parser.add_argument("--audio", required=True, help="input audio file")
    parser.add_argument("--out", required=True, help="output .npy, [frames, hidden] float32")
    parser.add_argument("--cache-dir", default=None, help="feature cache folder (optional)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        return cli.report(f"{args.out} already exists; choose another --out or pass --force")
    try:
        encoder = ContextEncoder.from_pretrained(args.checkpoint, cache_dir=args.cache_dir)
        hidden = encoder.encode_file(args.audio)
    except (AudioError, CheckpointError, FileNotFoundError, ValueError) as err:
        return cli.report(err)
    write_npy(args.out, hidden)
    print(f"{args.out}: {hidden.shape[0]} frames x {hidden.shape[1]} features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
