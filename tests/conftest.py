import os

# Tests run on the CPU with the default float32; float64 is switched on per test with jax.enable_x64.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis

hypothesis.settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
hypothesis.settings.load_profile("ci")
