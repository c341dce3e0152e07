"""Every test starts from the same global random state, so model initialisations (which draw from it)
and any other implicit randomness are reproducible run to run and independent of test order."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_global_random_state():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
