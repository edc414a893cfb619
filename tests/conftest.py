import os
import pathlib
import tempfile

# Tests run on the CPU with the default float32; float64 is switched on per test with jax.enable_x64.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import jax

hypothesis.settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
hypothesis.settings.load_profile("ci")

# Every Trainer jits its programs afresh, so tests of the same grid shapes compiled them again and
# again. JAX's persistent cache, keyed on the compiled HLO, the options and the versions, serves
# them to every test and both xdist workers (a cached executable computes bitwise the same).
_CACHE = pathlib.Path(tempfile.gettempdir()) / f"softcls-jax-tests-{os.getuid()}"
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
