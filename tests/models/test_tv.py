"""``tv:<name>``: torchvision models resolved by name, split at their last linear layer."""

from __future__ import annotations

import pytest
import torch

from perturbd.errors import ConfigError
from perturbd.models import get_model

GREY = (1, 28, 28)


def test_tv_models_refuse_other_channel_counts():
    with pytest.raises(ConfigError, match="1 or 3 image channels, got 4"):
        get_model("tv:resnet18", (4, 32, 32), 10)


def test_misspelt_torchvision_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'tv:resnet18'") as err:
        get_model("tv:resnt18", GREY, 10)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["tv:zzzzzz", "tv:"])
def test_unknown_torchvision_name_points_to_the_list(name):
    with pytest.raises(ConfigError, match=rf"^unknown torchvision model '{name}'; see torchvision.models.list_models\(\) for the names$"):
        get_model(name, GREY, 10)


def test_the_last_linear_layer_is_the_head_and_grey_images_are_repeated():
    model = get_model("tv:resnet18", (1, 16, 16), 6, seed=0).eval()
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.out_features == 6
    assert isinstance(model.body.fc, torch.nn.Identity)  # removed from the body: features() stops before it
    grey = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.body(model.normalize(grey)), model.body(model.normalize(grey).expand(-1, 3, -1, -1)))
        assert model(grey).shape == (2, 6)


def test_a_model_without_a_final_linear_layer_is_refused():
    with pytest.raises(ConfigError, match="tv:squeezenet1_1 does not end in a linear layer, so it has no features/head split"):
        get_model("tv:squeezenet1_1", (3, 32, 32), 10)
