"""A few `fit()` steps of the tiny ViT on digits, meant to be started by `torchrun` or `accelerate launch`.

    torchrun --nproc_per_node 2 -m helpers.lessons.l05_distributed_demo --out build/ddp

Each process writes `rank-<i>.json` with a checksum of its final weights and the indices of
the training images it read: data-parallel training is correct when every rank ends with the
same weights and the ranks share the epoch out between them, each image to one rank. On a CPU
the processes talk through gloo (Accelerate picks it when there is no GPU).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import ViTForImageClassification

from helpers import data, models, profiles, train
from helpers.train.guards import PROBE_IMAGES


class RecordedIndices(torch.utils.data.Dataset):
    """`dataset`, noting the index of every item this process reads."""

    def __init__(self, dataset):
        self.dataset, self.indices = dataset, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        self.indices.append(int(index))
        return self.dataset[index]


def weights_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-size", type=int, default=128)
    args = parser.parse_args(argv)
    settings = profiles.resolve("smoke", train_size=args.train_size, eval_size=40, batch_size=16, epochs=1)
    splits = data.load_dataset(settings.dataset_name, seed=0, train_size=settings.train_size,
                               eval_size=settings.eval_size)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = ViTForImageClassification(models.tiny_vit_config(len(splits.classes)))
    initial = weights_checksum(model)
    spec = data.ImageSpec((32, 32), (0.5,) * 3, (0.5,) * 3)
    splits = splits.with_transforms(data.eval_transform(spec))
    accelerator = train.make_accelerator(settings)
    train_set = RecordedIndices(splits.train)
    history = train.fit(model, train_set, splits.val, settings, accelerator=accelerator, progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "initial_checksum": initial,
        "checksum": weights_checksum(accelerator.unwrap_model(model)),
        "val_accuracy": history.rows[-1]["val_accuracy"],
        "train_loss": history.rows[-1]["train_loss"],  # the mean over every rank's images
        "last_lr": history.rows[-1]["lr"],  # the schedule ends at 0 when it counts the steps of all ranks
        "sample_indices": train_set.indices[PROBE_IMAGES:],  # after fit()'s input check
    }
    (args.out / f"rank-{accelerator.process_index}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    accelerator.wait_for_everyone()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
