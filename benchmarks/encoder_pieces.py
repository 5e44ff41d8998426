"""Speed of the encoder's CNN and broadcast decoder run whole or in pieces of frames (CPU).

    python benchmarks/encoder_pieces.py [--encoder savi_32] [--frames 48] [--pieces 0 16 8 4]
        [--repeats 3] [--threads 0]

``--pieces``: frames per piece, 0 = the whole batch at once. For each, prints one JSON line per
part: the decoder's forward and backward, the decoder's forward alone (as in slot extraction),
the CNN's forward and backward, and its forward alone, in ms and frames/s (best of
``--repeats``), with the machine's fp32 matmul peak. The package picks the piece size from
``DECODER_PIECE_BYTES`` and ``CNN_PIECE_BYTES`` (causaljepa/models/savi.py); this sets them
to the frames asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

import causaljepa.models.savi as savi
from causaljepa.benchmarking import best_ms, device_ceilings, emit

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "encoder"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="savi_32", help="a config in configs/encoder/")
    p.add_argument("--frames", type=int, default=48, help="frames in the batch (a training step: 8 x 6)")
    p.add_argument("--pieces", type=int, nargs="+", default=[0, 16, 8, 4], help="frames per piece; 0: whole")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    a = p.parse_args()
    if a.frames < 1 or a.repeats < 1 or any(n < 0 for n in a.pieces):
        p.error("--frames and --repeats must be >= 1 and --pieces >= 0")
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = savi.EncoderConfig(**yaml.safe_load((CONFIGS / f"{a.encoder}.yaml").read_text()))
    torch.manual_seed(0)
    model = savi.SAVi(cfg)
    R, K, P = cfg.resolution, cfg.num_slots, cfg.resolution**2
    slots = torch.randn(a.frames, K, cfg.slot_dim, requires_grad=True)
    prior = torch.randn(a.frames, K, P).log_softmax(dim=1)
    images = torch.randn(a.frames, 3, R, R)
    decoder_frame = K * P * cfg.decoder_hidden * 4  # bytes of one frame's hidden activations
    cnn_frame = cfg.cnn_channels * R * R * 4

    def decoder_train():
        model.decoder(slots, prior)[0].square().mean().backward()

    def decoder_forward():
        with torch.no_grad():
            model.decoder(slots, prior)

    def cnn_train():
        model.encoder(images).square().mean().backward()

    def cnn_forward():
        with torch.no_grad():
            model.encoder(images)

    machine = device_ceilings(torch.device("cpu"))
    for n in a.pieces:
        rows = a.frames if n == 0 else n
        savi.DECODER_PIECE_BYTES, savi.CNN_PIECE_BYTES = rows * decoder_frame, rows * cnn_frame
        for part, fn in (
            ("decoder_forward_backward", decoder_train),
            ("decoder_forward", decoder_forward),
            ("cnn_forward_backward", cnn_train),
            ("cnn_forward", cnn_forward),
        ):
            ms = best_ms(fn, a.repeats)
            emit({"benchmark": "encoder_pieces", "part": part, "frames_per_piece": rows,
                  "ms": round(ms, 1), "frames_per_s": round(a.frames / ms * 1000, 1),
                  "config": {"encoder": a.encoder, "frames": a.frames, "threads": torch.get_num_threads()},
                  "machine": machine})  # fmt: skip


if __name__ == "__main__":
    main()
