"""How the replay's functions are compiled (numba).

Each is compiled once into numba's on-disk cache and releases the GIL. The replay's steps
take bundles of arrays (`kernel.Run`, `state.State`) and allocate nothing, so they run
without reference counting (`_nrt=False`): counting the references of a bundle's arrays at
every read cost more than the steps themselves. The steps taken at every input are
inlined where they are called (`inlined_step`); the rarer ones stay calls (`step`).

Numba keys a cached function on its own module's source: after editing a module of this
package, delete `__pycache__/*.nbi` and `*.nbc`, or a caller keeps the old code it inlined.
"""

from __future__ import annotations

from numba import njit

step = njit(cache=True, nogil=True, _nrt=False)
inlined_step = njit(cache=True, nogil=True, _nrt=False, inline="always")
