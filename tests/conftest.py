import os

# before torch is imported: spinning OpenMP threads next to another busy process slow steps 20-60x
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import repnext  # noqa: F401  (registers the models)

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def manifest() -> dict:
    """State-dict manifest of the official release checkpoints (copied from the official implementation)."""
    return json.loads((DATA / "state_dict_manifest.json").read_text())


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so folds are really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.fixture(scope="session")
def two_node_slurm():
    """The `local-multi` SLURM profile, when the two-node cluster of `slurm/local-up.sh --nodes 2` answers."""
    from ablations.clusters import get_slurm_profile, slurm_partitions

    profile = get_slurm_profile("local-multi")
    if profile.partition not in (slurm_partitions() or []):
        pytest.skip("no two-node SLURM cluster reachable (bash slurm/local-up.sh .slurm --nodes 2 starts one)")
    return profile
