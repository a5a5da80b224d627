"""Bad input to the integrations: clear errors that name the extra, the version range or the key."""

from __future__ import annotations

import re

import pytest
import torch

import distlog
from distlog.integrations.versions import require


def test_a_missing_framework_names_the_extra_and_the_range():
    with pytest.raises(ImportError, match=r"pip install 'distlog\[lightning\]'.*>=2\.4,<3"):
        require("lightning.pytorch", "no-such-distribution-xyz", "lightning", "2.4", "3")


def test_an_unsupported_version_names_the_installed_one():
    with pytest.raises(
        ImportError, match=rf"supports torch>=0\.1,<1; {re.escape(torch.__version__)}"
    ):
        require("torch", "torch", "accelerate", "0.1", "1")
    assert require("torch", "torch", "accelerate", "2.0", "99") is torch


def test_a_reduce_fx_distlog_cannot_honour_is_an_error_naming_the_key():
    lightning = pytest.importorskip("distlog.integrations.lightning")
    assert lightning.reduction_of("a", "avg") == "mean"
    assert lightning.reduction_of("a", torch.max) == "max"
    assert lightning.reduction_of("a", "SUM") == "sum"
    with pytest.raises(distlog.LogValueError, match="'train/p90'"):
        lightning.reduction_of("train/p90", lambda t: t.quantile(0.9))
    with pytest.raises(distlog.LogValueError, match="'x'"):
        lightning.reduction_of("x", "median")
