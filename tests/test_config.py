"""The config schema: the values a key allows come from the module that owns them."""

import pytest

from deconv_jax import config as config_lib
from deconv_jax import data, models, optimizers, parallel


@pytest.mark.parametrize(
  "owner,name,key",
  [
    (data, "SOURCES", "dataset.source"),
    (models, "ACTIVATIONS", "model.activation"),
    (models, "UPSAMPLERS", "generator.upsample"),
    (models, "OUTPUT_ACTIVATIONS", "generator.output_activation"),
    (parallel, "KINDS", "parallel"),
    (models, "PADDINGS", "model.padding"),
    (models, "RESIZE_METHODS", "generator.resize_method"),
    (optimizers, "OPTIMIZERS", "optimizer.name"),
    (optimizers, "SCHEDULES", "optimizer.schedule"),
  ],
)
def test_a_value_added_to_its_owner_is_allowed(monkeypatch, owner, name, key):
  c = config_lib.base()
  *section, field = key.split(".")
  (c[section[0]] if section else c)[field] = "new_variant"
  with pytest.raises(config_lib.ConfigError, match=f"config.{key}='new_variant' is not allowed: one of"):
    config_lib.validate(c)
  allowed = getattr(owner, name)
  added = {**allowed, "new_variant": None} if isinstance(allowed, dict) else (*allowed, "new_variant")
  monkeypatch.setattr(owner, name, added)
  config_lib.validate(c)  # one edit, in the owner
