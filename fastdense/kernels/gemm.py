"""Matrix products ``out = op(a) @ op(b)`` (``op`` = identity or transpose), Goto/BLIS style.

Large products pack ``op(a)`` into MR-row panels and ``op(b)`` into NR-column panels per KC
block (:mod:`fastdense.kernels.pack`) and run a generated register-tile micro-kernel
(:mod:`fastdense.kernels._microkernels`) over MC x NC blocks.  The micro-kernel reads its panels
through strides, so operands that stay in cache anyway are read in place: A whenever no
activation derivative is fused into its packing, and a row-major B up to ``DIRECT_ROWS`` rows
(packing costs more than it saves there; only edge panels are packed, and where B and the output
lie at one place within their cache lines, the panels are shifted onto the lines: ``_b_panels``).
The store of each tile is the *epilogue*: plain store, ``act(acc + bias)`` for the Dense forward
pass, or the SGD update of the weights for the fused backward pass (so the full ``dW`` need not
exist); the micro-kernel applies the common ones to full tiles itself.  Small products take a
direct path with no packing and no thread launch, and products of one or two rows (batch-1
inference) :func:`vector_matrix`, streaming ``b`` once, split over threads by row blocks.

Threads: per KC x NC block, the B block is packed once into a shared buffer (each thread a share
of its panels), then the threads take *tasks* (an MC-row block times a range of B panels) from an
atomic counter, so a core slowed down by another process simply does fewer of them.  With few
rows (up to ``DIRECT_ROWS``) a task is instead a range of B panels for all rows, and packs those
panels itself just before using them, for every KC block in turn (one parallel region for the
whole product, :func:`_spanning_tasks`), unless B is so large that it comes from memory: then the
shared block is packed by whole source rows, which stream faster, and for the fewest rows the
next block is packed by tasks among those using the current one (double buffering).  Callers
pass the packing buffers as a workspace (:func:`workspace_size`), so no call allocates.  Each
parallel region starts with the workers checking in (:mod:`fastdense.kernels._placement`): after
an idle pause, a worker woken on its caller's CPU moves off it instead of waiting for the caller
to stop spinning.

Reproducibility: every output element sums its K products in increasing ``p`` inside each KC
block (one micro-kernel call), and the blocks in increasing order, whichever thread runs which
task and for any thread count.  The small path is chosen from the shape alone.
"""

import functools

import numba
import numpy as np
from numba import prange
from numba.extending import register_jitable
from numba.np.ufunc.parallel import _iget_num_threads, _launch_threads

from fastdense.kernels import activation as act
from fastdense.kernels._codegen import (
    copy_n,
    fetch_add,
    fma,
    kernel,
    no_inline,
    sgd_n,
    strided_view,
    wide_vectors,
    zero_of,
)
from fastdense.kernels._isa import TILES, VENDOR
from fastdense.kernels._placement import caller_waits, region_opens, shorten_spin, worker_arrives
from fastdense.kernels._tiles import (
    BLOCKING,
    HALF_MR,
    _blocking,
    _half_strip,
    _half_ukernel,
    _strip,
    _strip_columns,
    _strip_width,
    _ukernel,
)
from fastdense.kernels.activation_passes import VALUES, call_values_pass, pass_address
from fastdense.kernels.memory import CACHE_LINE
from fastdense.kernels.pack import pack_a, pack_b, pack_b_gathered, pack_b_rows
from fastdense.kernels.update import sgd_step

# ``numba.get_num_threads()`` inside a jitted function goes through a ctypes pointer, which makes
# the caller uncacheable ("dynamic globals"); this intrinsic is what Numba's own prange lowering
# uses: a call to the threading layer's exported ``get_num_threads`` symbol.
# Code loaded from Numba's cache skips the intrinsic's typing, which is what starts the threading
# layer and registers that symbol, so start it here (as any prange kernel's first call would),
# with its workers' spin shortened first.
shorten_spin()
_launch_threads()

# Whether the AVX-512 tiles are compiled (else the AVX2 ones): some thresholds below differ.
WIDE_TILES = TILES == "avx512"

# Epilogues applied when a tile is stored after its last KC block.
EP_STORE = 0
EP_BIAS_ACT = 1
EP_SGD = 2

# Up to this many multiply-adds (m * n * k) the direct path wins: packing costs more than it
# saves.  Measured single-thread, per call incl. ~2 us of dispatch, direct vs packed (f32/f64):
# 16^3 3.5/3.9 vs 4.0/3.4 us, 24^3 5.2/6.4 vs 5.1/6.1 us, 32^3 8.2/8.1 vs 4.3/5.3 us,
# 32x64x64 17.9/21.3 vs 7.8/11.4 us; so the crossover is ~20^3.  Rows m <= 2 stay direct
# (3x256x256: 12.6/21.7 vs 32.2/61.4 us; 8x128x128 is a tie).
SMALL_WORK = 20 * 20 * 20
# Products of at most this many rows also have their own entry point, :func:`gemm_rows`.
ROWS_MAX = 2
# Below this many multiply-adds (the tiles': columns padded to whole NR panels) one thread does
# the packed product (no prange launch).
# Measured on 2 threads, Dense forward float32/float64, best of 9 x 3000 calls, two runs each
# with the threshold at 96^3 and at 32^3: 64x64x64 8.3 -> 7.6 / 13.9 -> 11.2 us, 128x64x64
# 16.0 -> 12.2 / 26.8 -> 21.5 us, 32x64x100 mixed (8.7 -> 10.4 / 14.0 -> 12.0 us); and in
# the layer grid, 48^3 made the training step at 32 x 64->64 slower (1.28x -> 0.89x of NumPy).
SERIAL_WORK = 64 * 64 * 64
# From this row length (a multiple of 4 KiB) a transposed A is packed rather than read in place
# (see ``_packed``): the weight gradient ``x.T @ dz`` of a 4096-input float64 layer.  Processes
# of both versions alternating: float64 4096x1024x1024 96.2 -> 90.8 ms and 4096x256x1024 24.3
# -> 22.6 ms (best of 3 runs of 3); in the bench's training step 4096->1024 at batch 1024, 270
# to 309 -> 262 to 281 ms over five runs each (NumPy 268 to 285), at batch 256 69.8 -> 67.7 ms
# (best of five).  At 16 KiB (float32 4096 columns, float64 2048) it was no clear gain: raw
# products at parity, the float32 training step at batch 1024 128 -> 134 ms (best of five).
# Packing every transposed A was slower at 1024 and 784 rows (float64 1024x1024x1024 21.6-22.2
# -> 23.3-23.7 ms), and at 4104 float64 columns, where the in-place read is not aliased
# (84.8-93.0 -> 90.9-97.0 ms).
# With the AVX2 tiles (Zen 3) the threshold is 4 KiB: a micro-panel of 6 rows of the transposed
# A takes a line from each row of ``a``, and with rows of any multiple of 4 KiB those lines all
# fall in one L1 set.  ``x.T @ dz``, two threads, 32 KiB / 4 KiB: float32 1024x4096->1024
# 86.8 / 49.8 ms (NumPy 46.0), 1024x1024->1024 20.0 / 13.0 ms (NumPy 13.6), 256x4096->1024
# 19.9 / 13.0-17.2 ms; float64 1024x1024->1024 37.4 / 26.0-28.3 ms (NumPy 24.9-30.4); the
# others at parity.  Packing every transposed A was slower there too (float32 1024x784->512
# 6.0 -> 8.0 ms, 1024x256->256 1.0 -> 1.8 ms), but that was the A of few output rows, which
# ``own_b`` tasks pack once per column chunk, and a slower ``pack_a``.  With a transposed A of
# more than DIRECT_ROWS output rows (packed once per row block) and ``pack_a`` reading 2-D
# views, the AVX2 tiles pack every such A: a micro-panel read in place takes a line from each
# of its kc rows for 6 elements, 32 KiB of lines per call beside the 32 KiB B micro-panel.
# ``x.T @ dz`` as out (M x N) over K, both versions in one process alternating on shared
# operands, best of 5: one thread, float32 784x512 over 1024 11.07 -> 9.60 ms (NumPy 8.81),
# 784x128 over 1024 2.75 -> 2.58 ms, 784x512 over 256 2.63 -> 2.50 ms, float64 22.8 -> 19.2,
# 6.10 -> 5.34, 5.59 -> 5.07 ms; two threads, 784x512 over 1024 5.42 -> 4.92 ms (float32) and
# 11.9 -> 9.9 ms (float64), 1024^3 (already packed: the faster ``pack_a`` only) 14.6 -> 14.1 and
# 28.8 -> 27.6 ms; 4096x1024 over 128 at parity.
# With the AVX-512 tiles on an Intel core (Emerald Rapids: 48 KiB L1, 2 MiB L2), a transposed A
# read in place was up to twice as slow as packed, and at any row length: there
# (PACKS_TRANSPOSED_A) every transposed A over more than PACKED_A_STEPS steps, or with rows of a
# multiple of 4 KiB, is packed.
# ``x.T @ dz`` (out = in x units, over the batch), three variants and NumPy in one process, 30 ms
# blocks in turn, best over 3 s: in place (as before) / packed thus (NumPy), two threads,
# float32 1024x1024 over 1024 17.8 / 8.8 ms (9.2), 784x512 over 1024 4.19 / 3.50 (2.94-3.41),
# 784x512 over 256 0.97-1.26 / 0.79-1.01 ms (0.79-1.04), 256x256 over 256 175 / 154 us (182),
# 1024x1024 over 128 1.24 / 0.99 ms (1.16), 4096x1024 over 32 1.37 / 1.18 (1.45), 784x128 over
# 1024 1.11 / 0.85 (0.83); 784x128 over 32 and 64 (read in place either way: 38.4 / 38.6 us)
# was faster in place than packed (40.2); 64x64 over 64, packed, twice as slow (13.5 / 6.9 us).
# Float64 1024x1024 over 1024 38.5 / 20.4 ms (16.9), 784x512 over 1024 8.8 / 7.3 (6.4), 1024x1024
# over 64 1.38 / 1.14 ms (1.39); one thread, float32 1024^3 28.2 / 15.5 ms (15.1), 512^3 2.15
# / 1.87 (1.81), 784x512 over 1024 6.83 / 5.57 (5.59).  Float32 Dense training step, two
# threads, 1024 x 1024->1024 42.3 / 34.0 ms (NumPy 40.2), 128 x 4096->1024 20.6 / 19.9 (27.0).
# The AVX-512 tiles on other cores keep the 32 KiB threshold, measured before on Zen 4.
ALIASED_A_BYTES = (32 << 10) if WIDE_TILES else (4 << 10)
PACKS_TRANSPOSED_A = WIDE_TILES and VENDOR == "intel"
# ... but not for a reduction of this many steps or fewer: a micro-panel read in place then
# takes at most 8 KiB of lines (one per step), which stay in L1 beside the B micro-panel, and
# the packing is a larger share of a short product (training step, batch 128, 784->128: 0.97x
# of reading in place).
PACKED_A_STEPS = 128
# ... nor with a B of at most this many panels (a narrow layer's ``dz``): each A micro-panel then
# serves so few B panels that packing it costs more than reading it in place.  ``x.T @ dz``,
# 784 x n over 1024 steps, two threads, packed / in place (NumPy): float32 n = 10 322 / 190 us
# (177), 20 468 / 354 (277), 32 445 / 331 (338), 48 594 / 496 (475), 64 788 / 662 (628);
# float64 n = 16 469 / 376 (468-482), 24 667 / 652 (631-669), 32 775 / 817 (763-778).
NARROW_B_PANELS_F32 = 4
NARROW_B_PANELS_F64 = 2
# Up to this many output rows the packed path reads a row-major B in place (each B panel is
# re-read by few row blocks, so packing it would cost more than it saves).
DIRECT_ROWS = 256
# ... and while B is small enough to stay in the per-core L2 cache (1 MiB on the target): a
# larger B read in place is a strided walk through memory that packing would make contiguous
# (measured 1.3x slower at 4096x1024).
DIRECT_B_BYTES = 2 << 20
# Up to DIRECT_SKINNY_ROWS rows (a batch of 32), a B of up to DIRECT_SKINNY_B_BYTES is read in
# place too: its panels are re-read by at most four row panels, and packing the whole of B
# took a fifth of such a product's time (one thread, float64 32x1024x1024: 332 of 1532 us).
# Bench forward pass, processes alternating, best of each run (2 threads unless said):
# float32 24 x 1024->1024 312-364 -> 266-295 us, 32 x 1024->1024 403-439 -> 358-414 us (one
# thread 775-824 -> 667-701 us); float64 32 x 784->512 329-349 -> 262-328 us (one thread
# 583-602 -> 500-529 us), 16 x 784->512 205-213 -> 134-182 us.  That was on the Xeon, where
# 8 MiB was slower (float32 32 x 2048->1024 1.88-2.27 -> 2.54-3.58 ms on one thread) and 4 MiB
# the limit.  On a Zen 4 core (AVX-512, 1 MiB L2, 32 MiB L3) 8 MiB reads faster in place than
# packed, both dtypes, Dense forward (``linear``), processes alternating, best of each, 4 -> 8
# MiB: two threads, float64 32 x 1024->1024 785-920 -> 698-816 us (NumPy 772-871), 16 rows
# 462-562 -> 348-412, 24 x 2048->512 624-699 -> 517-664; float32 16 x 2048->1024 451-603 ->
# 349-414, 32 x 2048->1024 765-800 -> 693-844, 32 x 1024->2048 792-819 -> 672-922; one thread,
# float64 32 x 1024->1024 1494-1571 -> 1396-1404 us (NumPy 1452-1503), 24 rows 1196-1239 ->
# 1021-1043; float32 16 x 2048->1024 869-938 -> 705-856, 32 x 2048->1024 1525-1679 ->
# 1355-1854.  16 MiB (float32 32 x 4096->1024) gained nothing there: 1740-1854 against
# 1772-2252 us.
# Later, up to half the L3 (OWN_B_BYTES): both versions and NumPy in one process, 40 ms blocks
# in turn for 120 s, two threads, best / median block, packed by the tasks (``own_b``) -> in
# place (NumPy): float32 x 4096->1024 32 rows 1.53 / 2.10 -> 1.44 / 1.94 ms (1.76 / 2.10), 16
# rows 0.88 / 1.30 -> 0.72 / 1.13 (1.07 / 1.32), 8 rows 0.58 / 0.93 -> 0.39 / 0.70 (0.74 /
# 0.88), 32 x 1024->4096 (rows of 16 KiB) 1.85 / 2.79 -> 1.61 / 1.95; float64 32 x
# 2048->1024 1.56 / 2.42 -> 1.35 / 1.83 (1.53 / 1.85).  On one thread at parity (float32 32 x
# 4096->1024 3.46 / 3.94 -> 3.36 / 4.01 ms).
# With the AVX-512 tiles the same holds up to one row block (MC rows: 32 in float64, 64 in
# float32), each B panel then read once: same measurement, 90 s, float32 64 x 1024->1024 0.65
# / 0.68 -> 0.61 / 0.64 ms (NumPy 0.76 / 0.79), 64 x 4096->1024 2.91 / 3.67 -> 2.89 / 3.27
# (3.12 / 3.58), 48 x 2048->1024 1.02 / 1.14 -> 0.94 / 1.00, 64 x 1024->2048 1.33 / 1.52 ->
# 1.25 / 1.37; beyond 16 MiB (next paragraph), 64 x 4096->2048 5.94 / 10.8 -> 5.83 / 6.69;
# one thread at parity or better (64 x 1024->1024 1.30 / 1.39 -> 1.22 / 1.32 ms).
DIRECT_SKINNY_ROWS = 32
DIRECT_SKINNY_B_BYTES = 16 << 20
# Beyond that (from memory on every call), in place too on several threads while B's rows are
# at most this long: the packed alternative is a block shared between the cores, which the
# guest's slow phases make about twice as slow (see OWN_B_BYTES).  Same measurement, best /
# median / upper quartile, double-buffered -> in place (NumPy): float64 32 x 4096->1024 3.44
# / 5.27 / 7.66 -> 3.44 / 3.90 / 4.26 ms (3.57 / 4.16 / 4.59), 16 rows 2.11 / 2.61 / 3.31 ->
# 2.20 / 2.48 / 2.72; over 40 s, float64 32 x 2048->2048 (rows of 16 KiB) 3.37 / 4.47 ->
# 3.46 / 3.85, float32 32 x 4096->2048 3.44 / 5.60 -> 3.33 / 3.73.  With longer rows the
# best block lost more than the median gained (float64 32 x 1024->4096, rows of 32 KiB, 3.45 /
# 4.76 -> 4.00 / 4.63 ms; float32 32 x 1024->8192 3.60 / 6.99 -> 4.10 / 5.09), and one
# thread streams whole rows faster packed (float64 32 x 4096->1024 6.37 / 7.16 -> 6.94 / 7.55).
DIRECT_SKINNY_ROW_BYTES = 16 << 10
# On an Intel core (Emerald Rapids, AVX-512 tiles) a B beyond DIRECT_B_BYTES read in place is a
# line or two per 4 KiB page a step, which the prefetchers do not follow across pages; each
# further row panel re-reads it so.  There such a B is read in place for one row panel (MR
# rows), or for two while it is at most INTEL_SKINNY_B_BYTES; more rows pack it (column chunks
# by the tasks, or from OWN_B_BYTES whole rows).  ``a @ b``, two threads, both versions and
# NumPy in one process, 30 ms blocks in turn for 2 s, best, in place for up to MC rows / these
# (NumPy): float32 x 1024->1024 8 rows 143 / 143 us (276), 16 rows 224 / 224 (363), 24 rows 443
# / 449 (498), 32 rows 570 / 548 (519), 48 rows 963 / 641 (662), 64 rows 1123 / 703 (736);
# x 4096->1024 8 rows 894 / 894 (1227), 16 rows 1523 / 1338 (1390), 32 rows 2755 / 1591
# (2029), 64 rows 5915 / 3468 (3624); 32 x 2048->1024 1150 / 843 (933); float64 x 1024->1024
# 8 rows 382 / 382 (521), 16 rows 530 / 530 (578), 32 rows 1376 / 973 (755); x 4096->1024 8
# rows 2826 / 2826 (2149), 16 rows 4637 / 3541 (2385), 32 rows 7027 / 4442 (3347).
INTEL_SKINNY_B_BYTES = 8 << 20
# ... and a B of 1 to 2 MiB (DIRECT_B_BYTES) for up to MC rows: over more row blocks, which
# each re-read it so, it is packed there too.  Same measurement, 3 s, in place / packed from 1
# MiB for more than MC rows (NumPy): float32 256 x 784 x 512 968 / 854 us (883), 192 rows 896 /
# 760 (803), 128 rows 608 / 490 (634), 256 x 1024 x 512 1206 / 1010 (1019), 200 x 700 x 700
# 1168 / 947 (802), 256 x 512 x 512 (1 MiB, in place either way) 556 / 549 (722); float64
# 256 x 784 x 256 920 / 819 (989), 128 rows 495 / 470 (605).  For 64 and 32 rows reading in
# place stayed faster: float32 x 784 x 512 219 and 120 against 247 and 144 us packed (NumPy 254
# and 186), float64 x 784 x 256 229 and 116 against 248 and 145 (306 and 164).
INTEL_DIRECT_B_BYTES = 1 << 20
# Those were measured with the AVX-512 tiles.  With the AVX2 tiles (a B panel of 16 float32 or 8
# float64 columns: one cache line a step, at the row stride), reading B in place was mostly
# slower, so there B is read in place only in float32, for up to DIRECT_SKINNY_ROWS rows and up
# to DIRECT_B_BYTES.  Zen 3, Dense forward float32, in place / packed: one thread 256 x 784->512
# 3.23 / 2.40 ms, 32 x 1024->1024 1.50 / 1.17 ms, 128 x 784->128 378 / 338 us; two threads
# 1.63 / 1.34 ms, 769 / 593 us, 204 / 187-288 us, 256 x 784->128 389-477 / 345-358 us; but
# 32 x 784->128 61-65 / 77-78 us and 32 x 784->512 224-253 / 232-296 us.  Float64 packed:
# two threads 128 x 784->128 513-524 / 348-361 us, 32 x 784->512 579-607 / 465-467 us.
# (Measured while the layer's weights had NumPy's 16-byte alignment; with them on cache lines,
# float32 B in place for up to 256 rows was still slower: 64 x 784->512 361 against 319 us,
# 256 x 784->512 1310 against 1181, 32 x 1024->1024 575 against 506.)
# With the weights on cache lines (since the layer allocates them there, see
# ``fastdense._aligned``), float64 B of up to DIRECT_F64_B_BYTES is read in place as well for up
# to DIRECT_SKINNY_ROWS rows, when its panels start on cache lines (aligned data and rows of a
# whole number of lines): each step of a panel is then one line.  Two threads, one process,
# packed / in place, Dense forward: 8 x 256->256 28.7 / 23.9 us, 16 x 784->128 82.4 / 70.4 us,
# 24 x 784->128 81.8 / 71.0, 32 x 256->256 66.6 / 63.6, 32 x 64->64 10.7 / 9.9; 32 x 784->128
# and 32 x 512->256 at parity, 32 x 784->512 (3.2 MB) 368 / 424 us.  With a B 16 bytes past a
# line (NumPy's usual alignment), ``matmul`` 32 x 784 x 128 went from 99.3 to 111.9 us: hence
# the alignment condition.  A B off its lines qualifies when the output is off its own by as
# much (``matmul`` allocates it so): its panels are then read from where the lines begin, the
# columns before and after gathered into a packed edge panel (see ``_b_panels``).  Two threads,
# B 16 bytes past a line, output on a line / in phase with B (on lines: both on lines):
# float64 16 x 784 x 128 66.5 / 54.0 us (50.2), 8 x 256 x 256 29.7 / 23.0 (21.5), 32 x 256 x
# 256 68.8 / 61.1 (59.9); float32 (read in place either way) 32 x 784 x 512 217 / 182 (181),
# 32 x 784 x 128 59.2 / 52.4 (46.4).
DIRECT_F64_B_BYTES = 1 << 20
# Half the L3 on the target.  Over this size a B for few rows comes from memory on every call:
# it is packed whole-row-wise instead of by column chunks (see ``_packed``; for a single row
# block on several threads, with rows of at most DIRECT_SKINNY_ROW_BYTES, it is read in
# place), and a product of one or two rows streams eight of its rows at a time (see
# ``_vecmat``).  For more than DIRECT_ROWS rows, a B of this size already is packed
# by rows.
OWN_B_BYTES = 16 << 20
# Up to this many row blocks (MC rows each: 64 rows in float32, 32 in float64), a B over
# OWN_B_BYTES is double-buffered on two threads: the next block is packed while the
# current one is used (see ``_packed``).  Float64 x 4096->1024, processes of the old and new
# code alternating, 2 threads, best of 7: 32 rows 4.05-4.57 -> 3.63-3.97 ms, 64 rows 6.30-6.66
# -> 5.99-6.51 ms, 128 rows (four row blocks) at parity, 256 rows slower (21.8-22.6 -> 22.5-23.4
# ms: each B block is re-read by eight row blocks, and the copy competes with them for the L3).
# The float32 4096->1024 weights, exactly OWN_B_BYTES, went from column-chunk packing to this
# in the benchmark's forward pass (three or four alternations): 32 rows 2.32-2.50 -> 1.76-1.90
# ms, 64 rows 3.54-4.07 -> 3.10-3.51 ms, 128 rows 6.53-7.15 -> 5.61-6.39 ms, 96 rows
# 4.54-5.18 -> 4.37-4.89 ms.  Later the same day, with the machine's memory less busy, the
# 32- and 64-row comparisons gained 0-10%.  Smaller B (2-8 MiB, in the L3) showed no clear
# gain either way, so those keep column-chunk packing.
# Since then those 16 MiB are back with the column chunks (now of 8 panels; a single row block
# now reads them in place, see DIRECT_SKINNY_B_BYTES), for fragility: on
# the Zen 4 guest, phases of seconds (from a fifth to most of the time in a run) make
# every product that shares a packed block between the cores about twice as slow, the two
# threads busy throughout, while products whose cores share nothing written (B read in place,
# or packed by the task that uses it) and NumPy's lose 0-12%.  Dense forward, float32 x
# 4096->1024, both versions and NumPy in one process, 30 ms blocks in turn for 170 s, median
# block out of / in those phases, double-buffered (single-buffered row packing for 256 rows)
# -> column chunks (NumPy): 32 rows 1.70 / 3.54 -> 1.85 / 2.27 ms (2.17 / 2.35), 128 rows
# 5.51 / 8.03 -> 5.73 / 6.11 (6.34 / 7.17), 256 rows 10.6 / 13.5 -> 10.7 / 11.3 (11.6 /
# 14.1); float64 x 2048->1024 (also 16 MiB), 90 s: 32 rows 1.71 / 3.68 -> 1.94 / 2.13 ms
# (NumPy 1.79 / 1.87: the same expected time over a run with a fifth of it in those phases, at
# a tenth of the spread), 128 rows 5.65 / 8.01 -> 5.71 / 6.12 (5.91 / 6.73).  For float64's
# 32 MiB x 4096->1024 (from memory) column chunks are slower out of those phases than NumPy:
# 32 rows 3.94 / 7.64 -> 4.94 / 5.53 ms (4.27 / 4.77), 64 rows 6.70 / 12.4 -> 7.63 / 8.28
# (7.26 / 8.22); B over OWN_B_BYTES kept the double buffering (since read in place for a
# single row block on two threads when its rows are short, see DIRECT_SKINNY_ROW_BYTES).
PIPELINE_BLOCKS = 2
# Packing tasks per pipelined B block, each a share of its rows (64 of a 512-row block).
NEXT_B_TASKS = 8


@register_jitable
def _activated_apart(code):
    """Whether activation ``code`` is applied by :func:`_activate_rows` after the product is
    stored: every element-wise one but the identity and ReLU (which the stores apply), not
    softmax (a pass over whole rows)."""
    return code != act.LINEAR and code != act.RELU and code != act.SOFTMAX


# Called from _epilogue_row and from _phase after the micro-kernels: not linked into either.
@kernel(nrt=False, link=False, error_model="numpy")
def _activate_rows(y, i0, rows, j0, ncols, code):
    """``y = act(y)`` in place on ``y[i0:i0 + rows, j0:j0 + ncols]``, for the element-wise
    activations other than ReLU and the identity (which the micro-kernels apply as they store).

    By the activation's values pass (:mod:`.activation_passes`: a loop of its own, which
    vectorizes, compiled when a layer first uses the activation).  Without one installed (the
    layer kernels refuse that before they start: ``require_passes``) the block is set to NaN.
    """
    fn = pass_address(VALUES, y, code)
    if fn != 0:
        call_values_pass(fn, y, i0, rows, j0, ncols)
        return
    for i in range(i0, i0 + rows):
        yr = y[i, j0:j0 + ncols]
        for j in range(ncols):
            yr[j] = np.nan


# Called from four kernels (tile stores, small products, the batch-1 rows): not linked into
# each (see ``kernel(link=False)``).  With dz_rows unlinked too, a cold compile of a float32
# forward and backprop took 31.5-32.7 s against 33.8-39.4 s (CPU time, three alternations on a
# busy host), and no product moved beyond the noise (13 forward and training-step cases).
@kernel(nrt=False, link=False)
def _epilogue_row(acc, o, j0, ep, bias, code, yrow, wrow, lr, l1, l2):
    """Final value of one row segment ``acc`` (length nr) of the product, stored by ``ep``.

    ``o`` is the output row segment (``z`` for the forward pass, ``dw`` otherwise), ``yrow``
    the activation output segment, ``wrow`` the weights segment updated by SGD.
    """
    nr = acc.shape[0]
    if ep == EP_STORE:
        for j in range(nr):
            o[j] = acc[j]
    elif ep == EP_BIAS_ACT:
        if bias.shape[0] > 0:
            bseg = bias[j0:j0 + nr]
            for j in range(nr):
                o[j] = acc[j] + bseg[j]
        else:
            for j in range(nr):
                o[j] = acc[j]
        if code == act.RELU:
            for j in range(nr):
                v = o[j]
                yrow[j] = v if not v < 0 else zero_of(v)
        else:
            # (Softmax needs whole rows: applied by a second pass.)
            for j in range(nr):
                yrow[j] = o[j]
            if _activated_apart(code):
                _activate_rows(yrow.reshape(1, nr), 0, 1, 0, nr, code)
    else:
        sgd_step(wrow[:nr], acc[:nr], lr, l1, l2)


@kernel(nrt=False, inline="always")
def _sgd_row(w, wi, t, ti, lr, n):
    """``w[wi:wi + n] -= lr * t[ti:ti + n]`` (plain SGD) as vector IR, by 8 elements and then 4,
    2 and 1: a loop over a dozen elements would run scalar behind a runtime alias check."""
    for _ in range(n // 8):
        sgd_n(w, wi, t, ti, lr, 8)
        wi += 8
        ti += 8
    if n & 4:
        sgd_n(w, wi, t, ti, lr, 4)
        wi += 4
        ti += 4
    if n & 2:
        sgd_n(w, wi, t, ti, lr, 2)
        wi += 2
        ti += 2
    if n & 1:
        sgd_n(w, wi, t, ti, lr, 1)


@kernel(nrt=False, inline="always")
def bias_relu_row(t, o, yr, bias, j0, has_bias, relu):
    """``o = t + bias[j0:]`` (none unless ``has_bias``) and ``yr = relu(o)``, or ``yr = o``
    without ``relu``: the stores of a tile row's bias and activation (as in _epilogue_row),
    in a loop of the caller's own."""
    for j in range(t.shape[0]):
        v = t[j] + bias[j0 + j] if has_bias else t[j]
        o[j] = v
        yr[j] = v if not (relu and v < 0) else zero_of(v)


@kernel(nrt=False)
def column_sums_serial(a, out):
    """``out[j] = sum_i a[i, j]``, row after row (the order in which ``pack_b`` sums the
    columns it packs)."""
    m, n = a.shape
    for j in range(n):
        out[j] = 0.0
    for i in range(m):
        ai = a[i]
        for j in range(n):
            out[j] += ai[j]


@kernel(nrt=False)
def _store_tile(tile, NR, out, i0, mr, j0, nr, first, last, ep, bias, code, y, w, lr, l1, l2):
    no_inline()
    if first and last and ep == EP_STORE:
        # A plain store: one move per row (a copy loop would check for aliasing each time).
        for r in range(mr):
            copy_n(out[i0 + r], j0, tile, r * NR, nr)
        return
    # Plain SGD without a call per row: a layer of few units has only partial tiles, one row
    # of the weight gradient each for every input (training step 32 x 784->10, float32 80 ->
    # 65 us).
    plain_sgd = ep == EP_SGD and l1 == 0.0 and l2 == 0.0
    # Likewise the bias and ReLU (or identity) of a partial tile, the other activations then
    # applied to the whole tile at once: the arithmetic of _epilogue_row's, without a call per
    # row (a layer of fewer units than NR has only partial tiles; measured together with the
    # reading of such a B in place, see _narrow_b_tail).
    has_bias = bias.shape[0] > 0
    relu = code == act.RELU
    for r in range(mr):
        t = tile[r * NR:r * NR + nr]
        o = out[i0 + r, j0:j0 + nr]
        if not first:
            # Blocks add in increasing K order: t becomes the running sum.
            for j in range(nr):
                t[j] += o[j]
        if last and plain_sgd:
            _sgd_row(w[i0 + r], j0, tile, r * NR, lr, nr)
        elif last and ep == EP_BIAS_ACT:
            bias_relu_row(t, o, y[i0 + r, j0:j0 + nr], bias, j0, has_bias, relu)
        elif last:
            _epilogue_row(t, o, j0, ep, bias, code, y[i0 + r, j0:j0 + nr],
                          w[i0 + r, j0:j0 + nr], lr, l1, l2)
        else:
            copy_n(out[i0 + r], j0, tile, r * NR, nr)
    if last and ep == EP_BIAS_ACT and _activated_apart(code):
        _activate_rows(y, i0, mr, j0, nr, code)


# Workspace elements before the shared B block: the shared task counter ``ws[0]``, the count
# of workers that have started a parallel region ``ws[_ARRIVED]`` (:mod:`._placement`), and
# each thread's own counter ``ws[_OWN * (t + 1)]`` for ``_pipelined_tasks`` and
# ``_spanning_tasks``, each on a cache line of its own, so that a thread's updates of its
# counter (three atomics per task and KC block) never take the shared counter's line from the
# other core.
_OWN = 16
_OWN_THREADS = 15
_CTR = _OWN * (_OWN_THREADS + 1)
_ARRIVED = 1


@register_jitable
def double_buffers_b(m, n, k, itemsize, MC):
    """Whether a product of ``m`` rows (``MC`` to a row block) by a row-major ``k x n`` B packs
    the next B block while using the current one on two or more threads (see ``_packed``):
    its workspace then holds two B blocks."""
    return m <= PIPELINE_BLOCKS * MC and k * n * itemsize > OWN_B_BYTES


@register_jitable
def _b_block_len(n, k, NR, KC, NC):
    """Elements of one packed B block: at most NC columns in whole NR panels, one KC step; for
    fewer columns than a panel, room for the copy of B's end (:func:`_narrow_b_tail`)."""
    if n < NR:
        return (min(KC, k) + NR) * NR
    return ((min(NC, n) + NR - 1) // NR) * NR * min(KC, k)


@register_jitable
def _ws_len(m, n, k, MR, NR, KC, MC, NC, threads, double_b):
    """Workspace elements an ``m x n x k`` product needs with ``threads`` threads.

    The task counter and one packed B block (<= NC columns, whole panels, one KC step), shared,
    two with ``double_b``; per thread an A block (<= MC rows), the MR x NR edge tile and two
    packed edge panels of a B read in place (:func:`_per_thread`); at least ``n`` for the
    direct path's scratch row.  Callable from Python and from kernels.
    """
    blen = _b_block_len(n, k, NR, KC, NC)
    if double_b:
        blen *= 2
    alen = ((min(MC, m) + MR - 1) // MR) * MR * min(KC, k)
    return max(n, _CTR + blen + threads * _per_thread(alen, MR, NR, KC, k))


@register_jitable
def _per_thread(alen, MR, NR, KC, k):
    """Workspace elements of each thread's own: its A block (``alen``), the MR x NR tile, and
    the (at most two) edge panels of a B read in place, which each task packs for itself, or
    else one A panel of a fused activation derivative (``pack_a``'s scratch: ``2 * NR >= MR``
    in every tile set)."""
    return alen + MR * NR + 2 * NR * min(KC, k)


@register_jitable
def _b_panels(nc, NR, direct_b, shift):
    """``(whole, panels)`` of a column chunk of ``nc`` columns: the whole NR-column panels
    and all panels.  Packed, the panels are consecutive, the last one partial.  Read in place
    (``direct_b``), the whole panels start ``shift`` columns in, on B's cache lines, and the
    columns before and after them are gathered into one or two packed edge panels."""
    if not direct_b:
        npan = (nc + NR - 1) // NR
        return nc // NR, npan
    whole = max(0, nc - shift) // NR
    return whole, whole + (nc - whole * NR + NR - 1) // NR


@register_jitable
def _narrow_b_tail(k, n, NR, KC):
    """The first step of the copy of a ``k x n`` B of fewer columns than a panel (``n < NR``)
    that a product reading B in place reads instead of B: the start of the KC block of the
    first step whose NR elements from the start of its row pass B's end.

    Such a B is read in place, NR elements from the start of each row: the columns past ``n``
    hold the next rows' first elements, which only feed tile columns that are never stored.
    From this step on the tiles read a copy of the rest of B followed by zeros, made once per
    product into the shared B block (unused when B is read in place), whose length
    (:func:`_b_block_len`) covers it: at most ``min(KC, k) + NR - 1`` rows and NR zeros."""
    unsafe = max(0, k - (NR - 1) // n)
    return (min(unsafe, k - 1) // KC) * KC


@register_jitable
def _edge_runs(e, whole, nc, head, jc, NR):
    """The columns of edge panel ``e`` of a B read in place (see :func:`_b_panels`), as two
    runs ``(j1, n1, off2, j2, n2)``: ``n1`` columns of ``out``/``b`` from ``j1`` (those before
    the chunk's first line boundary, ``head`` of them) in the panel's first columns, then
    ``n2`` from ``j2`` (after the chunk's whole panels) in its columns from ``off2``."""
    e0 = e * NR
    e1 = min(nc - whole * NR, e0 + NR)
    e2 = max(e0, head)
    return jc + e0, max(0, min(e1, head) - e0), e2 - e0, jc + whole * NR + e2, max(0, e1 - e2)


def workspace_size(m, n, k, dtype):
    """Length of the 1-D workspace ``product``/``gemm`` need for ``(m x k) @ (k x n)``.

    Enough for the direct path and for every Numba thread (up to
    ``numba.config.NUMBA_NUM_THREADS``, whatever ``set_num_threads`` says later).  A smaller
    workspace is still correct: fewer threads are used, and below one thread's share the
    kernel allocates its own.
    """
    return _workspace_size(m, n, k, np.dtype(dtype))


@functools.lru_cache(maxsize=1024)
def _workspace_size(m, n, k, dtype):
    # Cached: evaluating the size in Python (``dtype.name`` alone takes ~3 us in NumPy 2)
    # costs as much as a batch-1 product.
    MR, NR, KC, MC, NC = BLOCKING[dtype.name]
    return max(_ws_len(m, n, k, MR, NR, KC, MC, NC, numba.config.NUMBA_NUM_THREADS,
                       double_buffers_b(m, n, k, dtype.itemsize, MC)),
               rows_ws_len(min(m, ROWS_MAX), n, k, KC, dtype.itemsize))


@register_jitable
def _row_blocks(m, n, MR, NR, MC, nthreads, own_b, shared_a):
    """Row blocks of an ``m x n`` product: at most ``MC`` rows each, equal in whole MR-row
    panels (block ``ib`` is panels ``pm * ib // nib`` to ``pm * (ib + 1) // nib``, ``pm`` the
    panels of ``m``), and on several threads (unless each task spans all row blocks, ``own_b``)
    a multiple of their number, so that the threads get equal work (256 float32 rows were
    blocks of 72, 72, 72 and 40 rows, now 60, 66, 66 and 64).  Measured against MC-row blocks,
    both in one process alternating on shared operands, two threads: matmul 1024^3, 2048^3,
    256x784x512 and 100x1024x1024 in both dtypes within 2% (one float64 2048^3 3-10% faster).

    Up to MC rows over fewer NR-column panels than threads (a layer of 17 to 32 float32 or 9 to
    16 float64 units at a small batch), one block per thread, so that no thread idles while
    another has the only task; not when the single A block is packed once for all tasks
    (``shared_a``: its panels are where one block expects them).  Layers, two threads, one
    process, best of 20 ms blocks, one block / a block per thread (NumPy): forward float64 32 x
    784->16 17.3 / 11.0 us (17.0), float32 32 x 784->20 21.0 / 14.4 (12.9), 64 x 784->20 36.2 /
    21.7 (19.2).  The blocks do not change any sum's order: results are the same for any
    ``nthreads``.
    """
    nib = (m + MC - 1) // MC
    if nthreads > 1 and not own_b:
        if nib > 1:
            nib = min((m + MR - 1) // MR, ((nib + nthreads - 1) // nthreads) * nthreads)
        elif not shared_a and (n + NR - 1) // NR < nthreads:
            nib = min((m + MR - 1) // MR, nthreads)
    return nib


# Not linked into its callers (_packed and its parallel region, three modules of Numba's
# parfor machinery): its code, with the packing and the micro-kernel, is compiled once.
@kernel(nrt=False, link=False)
def _phase(phase, t, nthreads, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
           dcode, z, yd, dz, colsum, db, jc, nc, pc, kc, ws, alen, ctr, ntasks, ncol,
           shared_a, direct_a, direct_b, shift, own_b, row_split, nbuf, cur):
    """Thread ``t``'s part of one KC x NC block.

    Phase 0 packs what is shared: its share of the B block (summing those columns for the bias
    gradient) unless ``own_b`` or ``direct_b``, and with ``shared_a`` its share of the single
    A block.  Phase 1 runs tasks from the shared counter ``ctr[0]``.  With
    ``direct_a`` / ``direct_b`` the micro-kernel reads the full panels of A / B in place (those
    of B ``shift`` columns in, see :func:`_b_panels`), and each task packs the edge panels of B
    it uses.  With
    ``own_b`` phase 0 packs no B: a task is a column chunk for all row blocks, and packs its
    own B panels before using them; with ``row_split`` phase 0 packs a share of the B block's
    rows, all of their panels (see :func:`_packed`).  With ``nbuf`` = 2 B blocks in the
    workspace, ``cur`` is the one this block reads (see :func:`_pipelined_tasks`).
    """
    no_inline()
    MR, NR, KC, MC, NC = _blocking(out)
    m = out.shape[0]
    n = out.shape[1]
    k = a.shape[0] if trans_a else a.shape[1]
    blen = _b_block_len(n, k, NR, KC, NC)
    shared = _CTR + nbuf * blen
    per = _per_thread(alen, MR, NR, KC, k)
    bbuf = ws[_CTR + cur * blen:_CTR + (cur + 1) * blen]
    abuf0 = ws[shared:shared + alen]
    # This thread's own workspace: its A block, the tile, and the edge panels of a B read in
    # place (or pack_a's scratch for a derivative not written to dz, see _per_thread).
    buf = ws[shared + t * per:shared + (t + 1) * per]
    tile = buf[alen:alen + MR * NR]
    ebuf = buf[alen + MR * NR:]
    whole, npan = _b_panels(nc, NR, direct_b, shift)
    if phase == 0:
        if own_b or direct_b:
            pass  # each task packs the B panels (own_b) or edge panels it uses, in phase 1
        elif row_split:
            pack_b_rows(b, pc, kc, (kc * t) // nthreads, (kc * (t + 1)) // nthreads, jc, nc,
                        bbuf)
        else:
            q0 = (npan * t) // nthreads
            q1 = (npan * (t + 1)) // nthreads
            if q1 > q0:
                pack_b(b, trans_b, pc, kc, jc + q0 * NR, min(nc, q1 * NR) - q0 * NR,
                       bbuf[q0 * NR * kc:], colsum, db)
        if shared_a:
            pm = (m + MR - 1) // MR
            r0 = (pm * t) // nthreads
            r1 = (pm * (t + 1)) // nthreads
            if r1 > r0:
                # (``ebuf`` is unused before phase 1.)
                pack_a(a, trans_a, r0 * MR, min(m, r1 * MR) - r0 * MR, pc, kc,
                       abuf0[r0 * MR * kc:], dcode, z, yd, dz, jc == 0, ebuf)
        return
    # Phase 1: task ``i`` is row block ``i // ncol`` (MC rows) times column chunk ``i % ncol``
    # (whole NR panels) of ``out[:, jc:jc + nc]``; it packs its A block (unless shared or read
    # in place) and multiplies it by the B block.  Threads take tasks from the counter as they
    # become free, so a core slowed down by another process does less of the work (results
    # do not depend on who does what).
    abuf = abuf0 if shared_a else buf[:alen]
    # Columns before B's first line boundary (read in place): the first run of edge panel 0.
    head = min(shift, nc)
    first = pc == 0
    last = pc + kc >= k
    ldb = b.shape[1]
    bf = b.reshape(b.shape[0] * ldb)
    # A B of fewer columns than a panel, read in place (see _narrow_b_tail).
    narrow_b = direct_b and ldb < NR
    tail_from = _narrow_b_tail(b.shape[0], ldb, NR, KC)
    nib = _row_blocks(m, n, MR, NR, MC, nthreads, own_b, shared_a)
    pm = (m + MR - 1) // MR
    s0, s1 = a.strides
    size = abuf.itemsize
    # Byte strides of a packed A block, ``(panel, step, row)``.
    packed = (MR * kc * size, MR * size, size)
    # Whether the micro-kernels' bias-and-activation stores (modes 4 and 5) leave the activation
    # to _activate_rows.
    post = ep == EP_BIAS_ACT and _activated_apart(code)
    while True:
        task = fetch_add(ctr, 0, 1)
        if task >= ntasks:
            break
        if own_b:
            cb = task
            ib0 = 0
            ib1 = nib
        else:
            ib0 = task // ncol
            cb = task - ib0 * ncol
            ib1 = ib0 + 1
        q0 = (npan * cb) // ncol
        q1 = (npan * (cb + 1)) // ncol
        # Where this task's B panels are: a chunk packed by the task itself starts where it
        # would with the longest KC block, so that tasks at different KC blocks at once
        # (``_spanning_tasks``) never share any of it.
        b0 = q0 * NR * min(KC, k) if own_b else q0 * NR * kc
        if own_b and q1 > q0:
            pack_b(b, trans_b, pc, kc, jc + q0 * NR, min(nc, q1 * NR) - q0 * NR,
                   bbuf[b0:], colsum, db)
        if direct_b and not narrow_b:
            # The edge panels, packed by each task using them (a copy of at most kc lines), so
            # that no phase of shared packing is needed.
            for q in range(max(q0, whole), q1):
                j1, n1, _, j2, n2 = _edge_runs(q - whole, whole, nc, head, jc, NR)
                pack_b_gathered(b, pc, kc, j1, n1, j2, n2, ebuf[(q - whole) * NR * kc:])
        for ib in range(ib0, ib1):
            ic = MR * ((pm * ib) // nib)
            mc = min(m, MR * ((pm * (ib + 1)) // nib)) - ic
            full = (mc // MR) * MR
            # Rows at the end of the block done by HALF_MR-row tiles, read in place (with the
            # AVX2 tiles, 6a + 4 rows: the last 4; 6a + 2: the last 8), so that no tile computes
            # zero rows: a batch of 32 is 4 x 6 + 2 x 4 rows rather than 6 x 6.
            tail = 0
            if HALF_MR > 0 and direct_a and full < mc:
                if (mc - full) % HALF_MR == 0:
                    tail = mc - full
                elif full > 0 and (mc - full + MR) % HALF_MR == 0:
                    tail = mc - full + MR
            if direct_a:
                if full < mc and tail == 0:
                    # The partial last row panel, zero-padded, at its place in ``abuf``.
                    pack_a(a, trans_a, ic + full, mc - full, pc, kc, abuf[full * kc:], dcode, z,
                           yd, dz, False, ebuf)
            elif not shared_a:
                # dz (fused activation derivative) is written by the task packing these rows first.
                # (A derivative not written to dz goes through ``ebuf``: B is then
                # transposed, never read in place.)
                pack_a(a, trans_a, ic, mc, pc, kc, abuf, dcode, z, yd, dz,
                       jc == 0 and cb == 0, ebuf)
            # The block's A panels as (panels, kc, rows) views, made once for all its B panels
            # (never 'C' typed, so that one micro-kernel serves all of them): ``nmain`` whole
            # MR-row panels, in place or packed; a zero-padded partial one, packed; the
            # HALF_MR-row panels of the tail, in place.
            nmain = (mc - tail) // MR
            npart = 1 if nmain * MR < mc - tail else 0
            hr = max(HALF_MR, 1)
            r1 = ic + mc - tail
            if not direct_a:
                amain = strided_view(abuf, (nmain, kc, MR), packed)
            elif trans_a:
                amain = strided_view(a[pc:, ic:], (nmain, kc, MR), (MR * s1, s0, s1))
            else:
                amain = strided_view(a[ic:, pc:], (nmain, kc, MR), (MR * s0, s1, s0))
            apart = strided_view(abuf[nmain * MR * kc:], (npart, kc, MR), packed)
            # (Empty unless ``direct_a``: only then is there a tail.)
            if trans_a:
                ahalf = strided_view(a[pc:, r1:], (tail // hr, kc, hr), (hr * s1, s0, s1))
            else:
                ahalf = strided_view(a[r1:, pc:], (tail // hr, kc, hr), (hr * s0, s1, s0))
            for q in range(q0, q1):
                # The panel's columns: ``nr`` from ``j1``, and ``nr2`` from ``j2`` held in its
                # columns from ``off2`` (an edge panel's second run).
                j1 = jc + q * NR
                nr = min(NR, nc - q * NR)
                j2 = 0
                nr2 = 0
                off2 = 0
                if direct_b and q < whole:
                    j1 = jc + shift + q * NR
                    nr = NR
                    bsrc = bf
                    bo = pc * ldb + j1
                    bps = ldb
                elif narrow_b:
                    bsrc = bf
                    bo = pc * ldb
                    if pc >= tail_from:
                        bsrc = bbuf
                        bo = (pc - tail_from) * ldb
                    bps = ldb
                elif direct_b:
                    j1, nr, off2, j2, nr2 = _edge_runs(q - whole, whole, nc, head, jc, NR)
                    bsrc = ebuf
                    bo = (q - whole) * NR * kc
                    bps = NR
                else:
                    bsrc = bbuf
                    bo = b0 + (q - q0) * NR * kc
                    bps = NR
                # Whole tiles are stored by the micro-kernel itself, with the common epilogues
                # (plain SGD, after one KC block or several; bias with ReLU or none), a whole
                # column of them per call; the rest (a partial row or column panel, the other
                # epilogues) stays in ``tile`` for _store_tile, one tile per call.  Measured
                # single-threaded, 1024 x 256->256 float64: SGD over two KC blocks by
                # _store_tile cost 0.54 ms of 3.80 ms.
                mode = 0
                target = out
                other = y
                if nr == NR:
                    if ep == EP_STORE or not last:
                        mode = 1 if first else 2
                    elif ep == EP_SGD:
                        if l1 == 0.0 and l2 == 0.0:
                            target = w
                            mode = 3
                            if not first:
                                mode = 6
                                other = out
                    else:
                        # The other activations are applied to the stored tiles right after
                        # (``post``), while they are in L1: through ``tile`` and _store_tile,
                        # float32 forward 256 x 784->128 with tanh took 518 against 303 us with
                        # ReLU (with leaky ReLU 414 us).
                        mode = 4 if first else 5
                for seg in range(3):
                    if seg == 0:
                        panels = amain
                        r0 = 0
                        h = MR
                        smode = mode
                    elif seg == 1:
                        panels = apart
                        r0 = nmain * MR
                        h = MR
                        smode = 0
                    else:
                        panels = ahalf
                        r0 = mc - tail
                        h = hr
                        smode = mode
                    cnt = panels.shape[0]
                    # (The HALF_MR-row kernels take one panel a call.)
                    step = cnt if smode != 0 and seg < 2 else 1
                    for t0 in range(0, cnt, max(step, 1)):
                        i0 = ic + r0 + t0 * h
                        # (One call site per kernel: each would be compiled and optimized again.)
                        if seg < 2:
                            _ukernel(kc, panels[t0:t0 + step], bsrc, bo, bps, tile, target, i0,
                                     j1, smode, lr, bias, other, code == act.RELU)
                        else:
                            _half_ukernel(kc, panels[t0:t0 + step], bsrc, bo, bps, tile, target,
                                          i0, j1, smode, lr, bias, other, code == act.RELU)
                        if post and smode >= 4:
                            _activate_rows(y, i0, step * h, j1, NR, code)
                        if smode == 0:
                            for run in range(2):
                                cols = nr2 if run else nr
                                if cols > 0:
                                    _store_tile(tile[off2 * run:], NR, out, i0,
                                                min(h, ic + mc - i0), j2 if run else j1, cols,
                                                first, last, ep, bias, code, y, w, lr, l1, l2)


@kernel(nrt=False)
def _pipelined_tasks(t, nthreads, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
                     dcode, z, yd, dz, colsum, db, jc, nc, pc, kc, ws, alen, ctr, ntasks, ncol,
                     shared_a, direct_a, direct_b, own_b, row_split, cur, npack, jc2, nc2, pc2,
                     kc2):
    """Phase 1 of :func:`_phase` for a double-buffered B block, with ``npack`` more tasks that
    pack the next block (``b[pc2:pc2 + kc2, jc2:jc2 + nc2]``) by rows into the workspace's
    other B block.

    Packing tasks alternate with product tasks on the shared counter, so that while one core
    copies the next block from memory the other computes, rather than both waiting on memory.
    A product task ``i`` runs as :func:`_phase` on a counter of this thread's own that yields
    ``i`` alone, which leaves the product loop as it is (a packing branch in that loop made
    small products several percent slower).
    """
    no_inline()
    _, NR, KC, _, NC = _blocking(out)
    k = a.shape[0] if trans_a else a.shape[1]
    blen = _b_block_len(out.shape[1], k, NR, KC, NC)
    nxt = ws[_CTR + (1 - cur) * blen:_CTR + (2 - cur) * blen]
    own = ws[_OWN * (t + 1):_OWN * (t + 1) + 1]
    pairs = min(npack, ntasks)
    while True:
        task = fetch_add(ctr, 0, 1)
        if task >= ntasks + npack:
            break
        job = -1
        if task < 2 * pairs:
            if task % 2 == 1:
                job = task // 2
            task = task // 2
        elif ntasks > pairs:
            task = task - pairs
        else:
            job = task - pairs
        if job >= 0:
            pack_b_rows(b, pc2, kc2, (kc2 * job) // npack, (kc2 * (job + 1)) // npack, jc2, nc2,
                        nxt)
            continue
        own[0] = 0
        fetch_add(own, 0, task)
        _phase(1, t, nthreads, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
               dcode, z, yd, dz, colsum, db, jc, nc, pc, kc, ws, alen, own, task + 1, ncol,
               shared_a, direct_a, direct_b, 0, own_b, row_split, 2, cur)


@kernel(nrt=False)
def _spanning_tasks(t, nthreads, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
                    dcode, z, yd, dz, colsum, db, jc, nc, ws, alen, ctr, ntasks, ncol, shared_a,
                    direct_a, direct_b, shift, own_b, row_split):
    """Phase 1 of :func:`_phase` for every KC block of a task in turn: the tasks of products
    whose tasks need nothing shared (``own_b`` or ``direct_b``: each packs what it uses) span
    the whole reduction, so that one parallel region serves all KC blocks instead of one each.

    Task ``i`` runs as :func:`_phase` on a counter of this thread's own that yields ``i``
    alone, once per KC block in increasing order: each output element sums its blocks in the
    same order as with a region per block.
    """
    no_inline()
    KC = _blocking(out)[2]
    k = a.shape[0] if trans_a else a.shape[1]
    own = ws[_OWN * (t + 1):_OWN * (t + 1) + 1]
    while True:
        task = fetch_add(ctr, 0, 1)
        if task >= ntasks:
            break
        for pc in range(0, k, KC):
            own[0] = 0
            fetch_add(own, 0, task)
            _phase(1, t, nthreads, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
                   dcode, z, yd, dz, colsum, db, jc, nc, pc, min(KC, k - pc), ws, alen, own,
                   task + 1, ncol, shared_a, direct_a, direct_b, shift, own_b, row_split, 1, 0)


# Called by every entry point: not linked into each of them (see ``kernel(link=False)``).
@kernel(parallel=True, link=False)
def _packed(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
            dcode, z, yd, dz, colsum, db, ws):
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    MR, NR, KC, MC, NC = _blocking(out)
    if colsum:
        for j in range(n):
            db[j] = 0
    nthreads = _iget_num_threads()
    # The work the tiles do: columns padded to whole NR panels (a float64 layer of 10 units
    # computes 16 columns; 32 x 784->10 forward on two threads 19.7 -> 14.4 us, NumPy 13.7).
    if m * (((n + NR - 1) // NR) * NR) * k < SERIAL_WORK:
        nthreads = 1
    kcap = min(KC, k)
    alen = ((min(MC, m) + MR - 1) // MR) * MR * kcap
    blen = _b_block_len(n, k, NR, KC, NC)
    per = _per_thread(alen, MR, NR, KC, k)
    shared = _CTR + blen
    if ws.shape[0] < shared + per:
        ws = np.empty(shared + per * nthreads, dtype=out.dtype)
    # A workspace too small for every thread only means fewer threads (same results).
    nthreads = max(1, min(nthreads, (ws.shape[0] - shared) // per))
    ctr = ws[:_CTR]
    nib = (m + MC - 1) // MC
    # Operands read in place, unpacked: A unless the activation derivative is fused into its
    # packing, or it is read transposed: with PACKS_TRANSPOSED_A over more than PACKED_A_STEPS
    # steps or with rows a multiple of 4 KiB; otherwise with rows a multiple of 4 KiB and at least
    # ALIASED_A_BYTES long (a micro-panel then takes one line per row at that stride, all in a
    # few L2 sets, and is evicted before the next B panel re-reads it) or, with the AVX2
    # tiles, for more than DIRECT_ROWS output rows over more than PACKED_A_STEPS steps, times a
    # B of more than NARROW_B_PANELS panels (see ALIASED_A_BYTES); B when it is not
    # transposed, not summed for the bias gradient, and re-read by few row blocks (below
    # DIRECT_ROWS rows, packing it costs more than it saves) while it is small enough
    # (DIRECT_B_BYTES, or for up to DIRECT_SKINNY_ROWS rows, MC with the AVX-512 tiles,
    # DIRECT_SKINNY_B_BYTES, or on several threads any size with rows of at most
    # DIRECT_SKINNY_ROW_BYTES).
    lda = a.shape[1] * a.itemsize
    direct_a = dcode == act.LINEAR and not (trans_a and (
        (PACKS_TRANSPOSED_A and (k > PACKED_A_STEPS or lda % 4096 == 0))
        or (lda >= ALIASED_A_BYTES and lda % 4096 == 0)
        or (not WIDE_TILES and m > DIRECT_ROWS and k > PACKED_A_STEPS
            and n > NR * (NARROW_B_PANELS_F32 if out.itemsize == 4 else NARROW_B_PANELS_F64))))
    b_bytes = k * n * out.itemsize
    # Whether B's panels can start on cache lines, in step with the output's tiles: B's rows
    # whole lines, and B on a line or in the same place within one as the output (a shifted
    # panel grid would otherwise put the output's tiles across lines, each shared with the
    # neighbouring tile, which another thread may be writing).
    phase = b.ctypes.data % CACHE_LINE
    on_lines = (b.strides[0] % CACHE_LINE == 0 and phase % out.itemsize == 0
                and (phase == 0 or (out.strides[0] % CACHE_LINE == 0
                                    and out.ctypes.data % CACHE_LINE == phase)))
    if WIDE_TILES:
        # (Up to MC rows, one row block: DIRECT_SKINNY_ROWS in float64, 64 rows in float32.)
        # A B of fewer columns than a panel is read in place for any number of rows (see
        # _narrow_b_tail): packed, it was a zeroed panel and a copy per row for every task or
        # KC block.  With the partial tiles' stores without a call per row (_store_tile), Dense
        # forward, both versions and NumPy in one process, 20 ms blocks in turn for 40 s, two
        # threads, best, before / after (NumPy): float64 16 x 784->10 12.0 / 9.7 us (9.0),
        # 32 x 784->10 14.5 / 12.8 (13.7), 256 x 784->12 78.0 / 70.0 (97.7), 1024 x 784->10
        # 268 / 256 (364), 300 x 100->12 20.1 / 17.2 (19.7), 64 x 256->15 10.0 / 9.9 (13.2);
        # float32 16 x 784->20 10.7 / 8.6 (8.6), 32 x 784->20 14.6 / 12.5 (12.9), 256 x
        # 784->24 71.4 / 69.0 (71.3), 1024 x 784->20 268 / 254 (236), 64 x 256->30 10.1 /
        # 10.2 (13.4); ``fastdense.matmul`` float64 16 x 784 x 9 13.0 / 10.7 (6.9), 32 x 256
        # x 10 8.2 / 7.7 (4.2).  The same B with its column sums (a layer's dz in its weight
        # gradient ``x.T @ dz``, the bias gradient summed apart, below): training steps (SGD),
        # 40 ms blocks for 30 s, before / after (NumPy): float64 32 x 784->10 63.4 / 60.0 us
        # (54.5), 256 x 784->10 232 / 228 (296), 1024 x 784->12 974 / 961 (1089), 64 x
        # 256->15 49.5 / 43.7 (49.9); float32 32 x 784->20 52.1 / 49.2 (53.5), 256 x 784->20
        # 209 / 204 (232), 1024 x 784->24 802 / 776 (818), 64 x 256->30 45.3 / 38.7 (49.9).
        if VENDOR == "intel":
            small = b_bytes <= INTEL_DIRECT_B_BYTES or (m <= MC and b_bytes <= DIRECT_B_BYTES)
            skinny = m <= MR or (m <= 2 * MR and b_bytes <= INTEL_SKINNY_B_BYTES)
        else:
            small = b_bytes <= DIRECT_B_BYTES
            skinny = (m <= max(MC, DIRECT_SKINNY_ROWS)
                      and (b_bytes <= DIRECT_SKINNY_B_BYTES
                           or (nthreads > 1 and b.strides[0] <= DIRECT_SKINNY_ROW_BYTES)))
        direct_b = (not trans_b and (not colsum or n < NR) and (m <= DIRECT_ROWS or n < NR)
                    and (small or skinny))
    else:
        direct_b = (not trans_b and not colsum and m <= DIRECT_SKINNY_ROWS
                    and (b_bytes <= DIRECT_B_BYTES if out.itemsize == 4
                         else on_lines and b_bytes <= DIRECT_F64_B_BYTES))
    # A B read in place on its lines is read from ``shift`` columns in (see _b_panels).
    shift = 0
    if direct_b and on_lines:
        shift = ((CACHE_LINE - phase) % CACHE_LINE) // out.itemsize
    # With a single row block (few rows, e.g. a small batch) the A block is packed once, by
    # all threads, rather than by each column chunk's task.
    shared_a = nib == 1 and not direct_a
    # A packed B that few row blocks re-read is packed by the task that uses it, a column chunk
    # at a time, and used for all row blocks at once while it is in this core's cache: no
    # shared block written by one core and read from the other's cache or from memory, no
    # barrier between packing and use.  With pack_b's row-wise copy, single-threaded float32
    # forward 32 x 1024->1024 went from 0.92 to 0.80 ms and 32 x 4096->1024 from 4.7 to 4.15;
    # in the layer grid on two threads (with that session's other changes) those cells went
    # from 0.64x and 0.62x of NumPy to 1.19x-1.23x and 1.05x-1.18x.
    own_b = not direct_b and m <= DIRECT_ROWS and b_bytes <= OWN_B_BYTES
    # A B beyond that, streamed from memory, is packed into the shared block by rows, each
    # thread a share of whole source rows: a column chunk is a short piece of every row, one
    # per memory page, which the prefetchers cannot follow (single-threaded, 4096 x 1024
    # float64 streams at 7.7-9.7 GB/s in column chunks, 24.5 GB/s in whole rows).  In the
    # layer grid's float64 forward, three A/B runs each: 32 x 4096->1024 went from 0.95-0.99x
    # of NumPy to 1.02-1.08x, 128 from 0.95-1.05x to 1.01-1.05x, 256 from 0.95-1.02x to
    # 0.99-1.03x.  The float32 4096 x 1024 (16 MiB, exactly OWN_B_BYTES) was once measured at
    # parity both ways and kept column chunks; in whole rows, two threads, one process against
    # the column chunks, best of 7: forward 256 rows 12.9 -> 12.3 ms (twice; NumPy 12.1), 192
    # rows 9.7-10.3 -> 9.3-9.5 ms, 256 x 1024->4096 12.6 -> 12.2 ms; one thread, 256 rows 24.8
    # -> 24.2 ms, 64 rows 7.30 -> 6.83 ms (up to DIRECT_ROWS rows, it has the column chunks
    # again: see OWN_B_BYTES).  For more rows, where the product dwarfs the
    # packing, only a B from memory (OWN_B_BYTES and more), which the shared block had taken in
    # column chunks too: float32 1024 x 4096->1024 +1.0 to +2.6% (four runs, one on one
    # thread), 512 rows +0.1 to +1.9%; float64 1024 x 4096->1024 +1.6%, 300 rows +3.0%,
    # 512 x 2048->1024 -0.3%.
    row_split = (not direct_b and (m <= DIRECT_ROWS or b_bytes >= OWN_B_BYTES) and not own_b
                 and not trans_b and not colsum)
    # With two threads, those blocks are double-buffered: while the threads multiply by one,
    # packing tasks among theirs copy the next into the second buffer, so the copy from memory
    # overlaps the other core's arithmetic instead of being a phase of its own.
    # (Each thread also needs a counter of its own, before ``ws[_CTR]``.)
    pipeline = (row_split and not shared_a and 1 < nthreads <= _OWN_THREADS
                and double_buffers_b(m, n, k, out.itemsize, MC)
                and ws.shape[0] >= shared + blen + 2 * per)
    nbuf = 1
    if pipeline:
        nbuf = 2
        shared += blen
        nthreads = min(nthreads, (ws.shape[0] - shared) // per)
    # As _phase splits the rows (for this final thread count).
    nib = _row_blocks(m, n, MR, NR, MC, nthreads, own_b, shared_a)
    if direct_b and colsum:
        # The column sums pack_b would take as it packs (a layer's bias gradient, from the dz
        # of a layer of fewer units than a panel), in the same order.
        column_sums_serial(b, db)
    if direct_b and n < NR:
        # The end of a B of fewer columns than a panel, read by every task from here (the
        # shared B block: not packed when B is read in place).
        start = _narrow_b_tail(k, n, NR, KC)
        cnt = (k - start) * n
        copy_n(ws, _CTR, b.reshape(k * n), start * n, cnt)
        for c in range(_CTR + cnt, _CTR + cnt + NR):
            ws[c] = 0
    cur = 0
    for jc in range(0, n, NC):
        nc = min(NC, n - jc)
        npan = _b_panels(nc, NR, direct_b, shift)[1]
        if own_b:
            # Chunks of at most 4 panels (256 KiB, stays in L2) and about 4 per thread; of 8
            # panels and about 2 per thread for a B of half the L3 (from the L3: half as many
            # tasks start on cold lines): float32 x 4096->1024, medians of 30 ms blocks in
            # turn, 4 -> 8 panels: 32 rows 2.08 -> 2.01 ms (such a single row block now reads
            # B in place), 128 rows 6.06 -> 5.96.
            width, per_thread = (4, 4) if b_bytes < OWN_B_BYTES else (8, 2)
            ncol = min(npan, max(per_thread * nthreads, (npan + width - 1) // width))
            ntasks = ncol
        else:
            ncol = 1
            if nthreads > 1:
                # About 4 tasks per thread, so that a thread slowed down (busy core) sheds work.
                ncol = min(npan, max(1, (4 * nthreads + nib - 1) // nib))
            ntasks = nib * ncol
        packs = shared_a if own_b or direct_b else True
        # Tasks that share nothing packed span every KC block (``_spanning_tasks``): one
        # parallel region for the whole reduction, not a region (and a barrier) per block.
        span = 1 < nthreads <= _OWN_THREADS and k > KC and not packs and not pipeline
        for pc in range(0, k, KC):
            kc = min(KC, k - pc)
            ctr[0] = 0
            if nthreads == 1:
                for phase in range(0 if packs and not own_b else 1, 2):
                    _phase(phase, 0, 1, a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr,
                           l1, l2, dcode, z, yd, dz, colsum, db, jc, nc, pc, kc, ws, alen, ctr,
                           ntasks, ncol, False, direct_a, direct_b, shift, own_b, row_split,
                           1, 0)
                continue
            if span and pc > 0:
                break
            # The block after this one, packed during this one's tasks when pipelined.
            npack = 0
            jc2 = jc
            nc2 = nc
            pc2 = pc + KC
            kc2 = kc
            if pipeline:
                if pc2 >= k:
                    jc2 = jc + NC
                    nc2 = min(NC, n - jc2)
                    pc2 = 0
                if jc2 < n:
                    kc2 = min(KC, k - pc2)
                    npack = NEXT_B_TASKS
            first_phase = 0 if packs else 1
            if pipeline and (jc > 0 or pc > 0):
                first_phase = 1
            # One prange, run twice (one parallel loop compiles much faster than two): first
            # the shared packing, then the tasks.  The prange index is unsigned: as int64 it
            # matches the serial call above, so both share one compiled _phase.
            for phase in range(first_phase, 2):
                caller_cpu = region_opens(ctr, _ARRIVED)
                for t in prange(nthreads):
                    worker_arrives(ctr, _ARRIVED, caller_cpu)
                    if phase == 1 and npack > 0:
                        _pipelined_tasks(np.int64(t), nthreads, a, b, out, trans_a, trans_b, ep,
                                         bias, code, y, w, lr, l1, l2, dcode, z, yd, dz, colsum,
                                         db, jc, nc, pc, kc, ws, alen, ctr, ntasks, ncol,
                                         shared_a, direct_a, direct_b, own_b, row_split, cur,
                                         npack, jc2, nc2, pc2, kc2)
                    elif span:
                        _spanning_tasks(np.int64(t), nthreads, a, b, out, trans_a, trans_b, ep,
                                        bias, code, y, w, lr, l1, l2, dcode, z, yd, dz, colsum,
                                        db, jc, nc, ws, alen, ctr, ntasks, ncol, shared_a,
                                        direct_a, direct_b, shift, own_b, row_split)
                    else:
                        _phase(phase, np.int64(t), nthreads, a, b, out, trans_a, trans_b, ep,
                               bias, code, y, w, lr, l1, l2, dcode, z, yd, dz, colsum, db, jc,
                               nc, pc, kc, ws, alen, ctr, ntasks, ncol, shared_a, direct_a,
                               direct_b, shift, own_b, row_split, nbuf, cur)
                    caller_waits(ctr, _ARRIVED, nthreads)
            if pipeline:
                cur = 1 - cur


@kernel(nrt=False, inline="always")
def _fma4(s, a0, a1, a2, a3, b0, b1, b2, b3):
    """``s + a0*b0 + a1*b1 + a2*b2 + a3*b3``, one FMA after the other."""
    return fma(a3, b3, fma(a2, b2, fma(a1, b1, fma(a0, b0, s))))


@kernel(nrt=False)
def _vecmat(ai, b, j0, j1, acc, deep):
    """``acc[j] = sum_p ai[p] * b[p, j]`` for ``j0 <= j < j1``: one FMA chain per element in
    increasing ``p``, whatever the column range.

    Four rows of ``b`` per pass over the columns, so ``acc`` is loaded and stored once per four
    FMAs and every stream is contiguous (measured 1.6-2.5x faster than 64-column register
    strips walking ``b`` down its columns, for 784x512 to 4096x1024).  ``deep`` takes eight
    rows per pass, for a ``b`` read from memory: eight streams in flight instead of four read
    a 4096x1024 float64 ``b`` at 30-34 GB/s instead of 22-27 on one core; from the caches
    (float32 4096x1024 included, 16 MiB) the four-row loop is as fast or faster.  Both give
    the same bits.
    """
    wide_vectors()
    k = ai.shape[0]
    o = acc[j0:j1]
    nn = j1 - j0
    for j in range(nn):
        o[j] = 0
    step = 8 if deep else 4
    kd = (k // step) * step
    for p in range(0, kd, step):
        a0, a1, a2, a3 = ai[p], ai[p + 1], ai[p + 2], ai[p + 3]
        b0, b1, b2, b3 = b[p, j0:j1], b[p + 1, j0:j1], b[p + 2, j0:j1], b[p + 3, j0:j1]
        if deep:
            a4, a5, a6, a7 = ai[p + 4], ai[p + 5], ai[p + 6], ai[p + 7]
            b4, b5, b6, b7 = b[p + 4, j0:j1], b[p + 5, j0:j1], b[p + 6, j0:j1], b[p + 7, j0:j1]
            for j in range(nn):
                s = _fma4(o[j], a0, a1, a2, a3, b0[j], b1[j], b2[j], b3[j])
                o[j] = _fma4(s, a4, a5, a6, a7, b4[j], b5[j], b6[j], b7[j])
        else:
            for j in range(nn):
                o[j] = _fma4(o[j], a0, a1, a2, a3, b0[j], b1[j], b2[j], b3[j])
    for p in range(kd, k):
        a0 = ai[p]
        b0 = b[p, j0:j1]
        for j in range(nn):
            o[j] = fma(a0, b0[j], o[j])


@kernel(nrt=False)
def strips(ai, b, acc):
    """``acc[j] = ai @ b[:, j]`` for every column ``j`` of ``b`` by register strips (each
    strip's sums stay in registers while the rows of ``b`` pass), then :func:`_vecmat` for the
    columns left over: the same FMA chain per element either way."""
    strips_between(ai, b, 0, b.shape[1], acc)


@kernel(nrt=False, inline="always")
def strips_between(ai, b, j0, j1, acc):
    """:func:`strips` for the columns ``j0:j1`` of ``b`` (``acc[j]`` for ``j0 <= j < j1``)."""
    sw = _strip_width(acc)
    j = j0
    while j + sw <= j1:
        _strip(ai, b, j, acc)
        j += sw
    if j1 - j >= sw // 2:
        _half_strip(ai, b, j, acc)
        j += sw // 2
    if j < j1:
        _vecmat(ai, b, j, j1, acc, False)


@kernel(nrt=False)
def _row_product(ai, b, acc, deep):
    """``acc[j] = ai @ b[:, j]`` for every column ``j`` of ``b``: by :func:`strips`, or
    :func:`_vecmat` (``deep`` as there) for long rows (the same FMA chain per element)."""
    n = b.shape[1]
    if n <= _strip_columns(acc):
        # Short rows: a strip walks down ``b`` nearly sequentially.  Longer rows would make it
        # a strided walk, slower than _vecmat's streaming of whole rows (measured 1.4x).
        strips(ai, b, acc)
    else:
        _vecmat(ai, b, 0, n, acc, deep)


#: The error of a kernel compiled without Numba's runtime (which cannot allocate) given a
#: workspace shorter than it needs.
SHORT_WORKSPACE = "the workspace is too short for this product (see workspace_size)"

#: Stores and later loads whose addresses agree in their low 12 bits (*4K aliasing*): a load
#: that follows a store to such an address waits for it as if they overlapped.
PAGE_BYTES = 4096


@register_jitable
def _unaliased(buf, size, b):
    """``size`` elements of ``buf`` whose stores do not 4K-alias the loads of ``b``'s rows.

    :func:`_vecmat` stores its sums ``acc[j]`` while it loads ``b[p, j + 8]``, ``b[p, j + 16]``,
    ...: when a row of ``b`` starts a little below the sums modulo 4 KiB, those loads wait on
    the stores just issued.  Rows of a multiple of 4 KiB (1024 float32 or 512 float64 columns)
    all do so when one does, and whether one does depends on where NumPy's allocator put the
    two arrays.  The window starts at an offset that puts every row of ``b`` (and every
    partial-sum row, a multiple of ``b``'s row length away) half a period of their common
    4 KiB residue away from the sums: 2 KiB for rows of a multiple of 4 KiB.  Measured with
    the workspace moved in steps of 128 bytes (best of 5): with the rows 128 bytes below the
    sums, one thread took 158 us at float64 1024x1024 (124-131 us elsewhere) and 71 us in
    float32 (56-60 us); two threads 80 us (64-67 us) and float32 4096x1024 155 us (126-135 us).
    Placed here, 124-125 us and 57 us at every step.  ``buf`` needs ``PAGE_BYTES`` more bytes
    than ``size``; a shorter one gives its first ``size`` elements, and one shorter than
    ``size`` is replaced by a new array with that room.  Only where the sums are kept moves,
    so the bits are the same.
    """
    if buf.shape[0] < size:
        buf = np.empty(size + PAGE_BYTES // buf.itemsize, dtype=buf.dtype)
    s = _unaliased_start(buf, size, b)
    return buf[s:s + size]


@register_jitable
def _unaliased_start(buf, size, b):
    """Where :func:`_unaliased`'s window starts in ``buf``, which must hold ``size`` elements
    (for kernels compiled without Numba's runtime, which cannot allocate)."""
    isz = buf.itemsize
    pad = PAGE_BYTES // isz
    if buf.shape[0] < size:
        raise ValueError(SHORT_WORKSPACE)
    if buf.shape[0] < size + pad:
        return 0
    row = b.strides[0]
    sums = b.shape[1] * isz
    period = min(PAGE_BYTES, row & -row, sums & -sums)
    target = (period // 2) // isz * isz
    # Residues first: the addresses are unsigned, and mixing them with signed integers would
    # make Numba compute in floating point.
    rb = np.intp(b.ctypes.data % PAGE_BYTES)
    rs = np.intp(buf.ctypes.data % PAGE_BYTES)
    gap = (rb - rs - target) % PAGE_BYTES
    return gap // isz


#: From this many elements of ``b`` a product of one or two rows is summed in row blocks of
#: ``b`` (:func:`_vector_block_rows`), which the threads take in contiguous runs.
VECTOR_SPLIT_MIN = 1 << 16
#: Row blocks of such a ``b`` (more when KC rows make a block first).  Each thread's run of
#: blocks is a contiguous part of ``b``, which stays in its core's L2 from call to call when it
#: fits.  A split by columns does not: with rows of 2 or 4 KiB, each thread's columns fall
#: into a fixed part of every 4 KiB page, so into that part of the L2's sets only, and half of
#: a 1.6 MB ``b`` does not fit in half of a 1 MiB L2.  Four blocks rather than two keep four
#: threads busy, at the same speed on two.  Measured on 2 threads, interleaved in one process,
#: best of 15: float32 784x512 19.9 -> 13.8 us, 512x512 12.0 -> 8.9 us; float64 784x256 21.9
#: -> 13.8 us, 784x512 30.9 -> 25.7 us.  The backward pass uses the same runs
#: (:func:`thread_blocks`), which is what made the batch-1 training step faster (see the
#: commit message).
VECTOR_BLOCKS = 4
#: Bytes of ``b`` times rows of ``a`` from which :func:`vector_matrix` shares its row blocks
#: among the threads when no backward pass follows (``fastdense.matmul``, and a layer's
#: forward until it first trains).  Below, one thread streams every block: a thread launch and
#: join cost about what half the stream saves, and on this KVM guest, for seconds at a time,
#: two threads' calls take about 2 us more while one thread's do not.  ``Dense.forward``,
#: float32, one thread / two, fast phase (slow phase): batch 1 256x256 3.5 / 3.95 us (6.0),
#: 784x128 4.7 / 4.5 (6.8), 512x256 6.3 / 5.2; batch 2 256x256 6.2 / 5.3.  A layer that
#: trains splits the blocks whatever their size (``threads_from`` 0), as its backward pass
#: does (:func:`thread_blocks`): each core then keeps its rows in its L2 over the whole step
#: (a training step at 784x128: 24 us; 41 to 143 us with the forward on one thread and the
#: backward on two).
VECTOR_THREADS_BYTES = 512 << 10


@register_jitable
def _vector_block_rows(k, n, KC):
    """Rows of ``b`` (``k x n``) per partial sum in :func:`vector_matrix`: ``k`` (no split)
    below ``VECTOR_SPLIT_MIN`` elements, else a multiple of 8 giving ``VECTOR_BLOCKS`` blocks,
    at most ``KC`` (the last block may be shorter).  The shape alone decides, so the bits are
    the same for any thread count.  Callable from Python and from kernels."""
    if k * n < VECTOR_SPLIT_MIN or k < 16:
        return k
    return min(KC, ((k + VECTOR_BLOCKS - 1) // VECTOR_BLOCKS + 7) // 8 * 8)


@register_jitable
def rows_ws_len(m, n, k, KC, itemsize):
    """Workspace elements :func:`vector_matrix` needs for ``m`` (at most ``ROWS_MAX``) rows by
    a ``k x n`` ``b``: the sums (partial sums per row block of ``b`` and the count of workers
    when split, see :func:`_vector_block_rows`) and ``PAGE_BYTES`` of room to place them
    (:func:`_unaliased`).  Callable from Python and from kernels."""
    kb = _vector_block_rows(k, n, KC)
    sums = n if kb >= k else ((k + kb - 1) // kb) * m * n + 1
    return sums + PAGE_BYTES // itemsize


def vector_block_rows(k, n, dtype):
    """Rows of ``b`` per partial sum when one or two rows multiply a ``k x n`` ``b`` of
    ``dtype`` (:func:`gemm_rows`, ``dense.forward_rows``); ``k`` means one FMA chain per
    element, the bits of :func:`gemm`."""
    return _vector_block_rows(k, n, BLOCKING[np.dtype(dtype).name][2])


@register_jitable
def thread_blocks(nblk, t, nthreads):
    """Blocks ``blk0:blk1`` of thread ``t``'s contiguous run when ``nthreads`` share ``nblk``.

    The backward pass of a batch of one or two (``dense._small_batch_backward``) splits the
    weights into the same runs of :func:`_vector_block_rows` blocks as :func:`vector_matrix`,
    so that over a training step each core reads and updates the same rows, in its own L2.
    """
    return (nblk * t) // nthreads, (nblk * (t + 1)) // nthreads


@kernel(nrt=False)
def _rows_block(a, b, out, ep, bias, code, y, w, lr, l1, l2, acc):
    """``out = a @ b`` (not transposed) and its epilogue, row by row, one FMA chain per
    element."""
    n = out.shape[1]
    for i in range(out.shape[0]):
        _row_product(a[i], b, acc, False)
        _epilogue_row(acc[:n], out[i], 0, ep, bias, code, y[i], w[i], lr, l1, l2)


@kernel(nrt=False)
def _partial_products(a, b, part, kb, blk0, blk1, deep):
    """Partial sums of ``a @ b`` over the row blocks ``blk0:blk1`` of ``b`` (``kb`` rows each)
    into ``part``, block-major: block ``blk``, row ``i`` at ``(blk * m + i) * n``."""
    m = a.shape[0]
    k, n = b.shape
    for blk in range(blk0, blk1):
        p0 = blk * kb
        p1 = min(k, p0 + kb)
        for i in range(m):
            q = (blk * m + i) * n
            _row_product(a[i, p0:p1], b[p0:p1], part[q:q + n], deep)


@kernel(parallel=True, nrt=False)
def vector_matrix(a, b, out, ep, bias, code, y, w, lr, l1, l2, acc, threads_from):
    """``out = a @ b`` with epilogue ``ep`` for few rows (batch-1 inference): no packing.

    A small ``b`` is one FMA chain per element on one thread.  From ``VECTOR_SPLIT_MIN``
    elements each element is the sum of partial sums over row blocks of ``b``
    (:func:`_vector_block_rows`), added in block order.  Threads take contiguous runs of
    blocks, each streamed row by row (eight rows at a time for a ``b`` read from memory), and
    the bits do not depend on the thread count: threads from ``threads_from`` bytes of ``b``
    times rows of ``a`` (0: always; see ``VECTOR_THREADS_BYTES``), one thread below.  ``acc``
    is a scratch (the whole workspace spares the partial sums an allocation; one shorter than
    the sums raises ``ValueError``: compiled without Numba's runtime, which costs a batch-1
    call about 0.3 us, the kernel cannot allocate; :func:`rows_ws_len` is what it needs).
    """
    m, n = out.shape
    k = b.shape[0]
    kb = _vector_block_rows(k, n, _blocking(out)[2])
    if kb >= k:
        s0 = _unaliased_start(acc, n, b)
        _rows_block(a, b, out, ep, bias, code, y, w, lr, l1, l2, acc[s0:s0 + n])
        return
    nblk = (k + kb - 1) // kb
    per = m * n
    need = nblk * per
    deep = k * n * out.itemsize > OWN_B_BYTES
    nthreads = min(_iget_num_threads(), nblk) if m * k * n * out.itemsize >= threads_from else 1
    # The partial sums, then with threads one element counting the workers that started
    # (:mod:`._placement`).
    size = need + (1 if nthreads > 1 else 0)
    s0 = _unaliased_start(acc, size, b)
    buf = acc[s0:s0 + size]
    part = buf[:need]
    if nthreads == 1:
        # No thread launch for one thread (about 1 us, a quarter of a 256x256 product).
        _partial_products(a, b, part, kb, 0, nblk, deep)
    else:
        caller_cpu = region_opens(buf, need)
        for t in prange(nthreads):
            worker_arrives(buf, need, caller_cpu)
            blk0, blk1 = thread_blocks(nblk, t, nthreads)
            _partial_products(a, b, part, kb, blk0, blk1, deep)
            caller_waits(buf, need, nthreads)
    for i in range(m):
        s = part[i * n:(i + 1) * n]
        for blk in range(1, nblk):
            q = blk * per + i * n
            pb = part[q:q + n]
            for j in range(n):
                s[j] = s[j] + pb[j]
        _epilogue_row(s, out[i], 0, ep, bias, code, y[i], w[i], lr, l1, l2)


# Called by every entry point: not linked into each of them (see ``kernel(link=False)``).
@kernel(nrt=False, link=False)
def _small(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2, acc):
    """Direct product for small shapes: no packing, no threads; ``acc`` is an n-row scratch.

    Each element still sums its products in increasing ``p`` (one FMA chain per element).
    """
    no_inline()
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    for i in range(m):
        if not trans_a and not trans_b:
            _vecmat(a[i], b, 0, n, acc, False)
            _epilogue_row(acc[:n], out[i], 0, ep, bias, code, y[i], w[i], lr, l1, l2)
            continue
        for j in range(n):
            acc[j] = 0
        if trans_b:
            for j in range(n):
                bj = b[j]
                s = acc[j]
                if trans_a:
                    for p in range(k):
                        s = fma(a[p, i], bj[p], s)
                else:
                    ai = a[i]
                    for p in range(k):
                        s = fma(ai[p], bj[p], s)
                acc[j] = s
        else:
            for p in range(k):
                aip = a[p, i] if trans_a else a[i, p]
                bp = b[p]
                for j in range(n):
                    acc[j] = fma(aip, bp[j], acc[j])
        _epilogue_row(acc, out[i], 0, ep, bias, code, y[i], w[i], lr, l1, l2)


@kernel
def is_small(m, n, k):
    """Whether ``m x n x k`` takes the direct (unpacked, single-thread) path.

    Also for one or two rows (batch-1 inference: a vector-matrix product) and for reductions of
    one or two steps (the batch-1 weight gradient, an outer product): both are bound by memory
    traffic, which packing would only add to.
    """
    return m * n * k <= SMALL_WORK or m <= ROWS_MAX or k <= 2


@kernel
def product(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2, ws):
    """``out = op(a) @ op(b)`` with epilogue ``ep`` (see module constants); no fusion in A/B.

    ``ws`` is a 1-D workspace of the output's dtype, :func:`workspace_size` long.
    """
    m, n = out.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0 or is_small(m, n, k):
        acc = _unaliased(ws, n, b)
        _small(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2, acc)
        return
    e2 = out[:0]
    _packed(a, b, out, trans_a, trans_b, ep, bias, code, y, w, lr, l1, l2,
            act.LINEAR, e2, e2, e2, False, bias[:0], ws)


@kernel
def gemm(a, b, out, trans_a, trans_b, ws=None):
    """Overwrite ``out`` (M, N) with ``op(a) @ op(b)``.

    Parameters
    ----------
    a : ndarray, 2-D, C-contiguous
        ``(M, K)``, or ``(K, M)`` when ``trans_a``.
    b : ndarray, 2-D, C-contiguous
        ``(K, N)``, or ``(N, K)`` when ``trans_b``.
    out : ndarray, 2-D, C-contiguous
        ``(M, N)``; overwritten.
    trans_a, trans_b : bool
        Whether to read ``a`` / ``b`` transposed.
    ws : ndarray, 1-D, optional
        Workspace of ``out``'s dtype, ``workspace_size(M, N, K, dtype)`` long; without it the
        kernel allocates one.
    """
    e1 = out[0, :0] if out.shape[0] > 0 else np.empty(0, dtype=out.dtype)
    if ws is None:
        k = a.shape[0] if trans_a else a.shape[1]
        MR, NR, KC, MC, NC = _blocking(out)
        m, n = out.shape
        buf = np.empty(_ws_len(m, n, k, MR, NR, KC, MC, NC, _iget_num_threads(),
                               double_buffers_b(m, n, k, out.itemsize, MC)), dtype=out.dtype)
    else:
        buf = ws
    product(a, b, out, trans_a, trans_b, EP_STORE, e1, act.LINEAR, out, out, 0.0, 0.0, 0.0, buf)


@kernel(nrt=False)
def gemm_rows(a, b, out, ws):
    """:func:`gemm` (not transposed) for one or two rows and ``K > 0``: a separate entry point,
    compiled only when used, that streams ``b`` once (in row blocks split over the threads
    from ``VECTOR_THREADS_BYTES``: :func:`vector_matrix`).  ``ws`` is :func:`workspace_size`
    long (a shorter one than the product needs raises ``ValueError``)."""
    vector_matrix(a, b, out, EP_STORE, ws[:0], act.LINEAR, out, out, 0.0, 0.0, 0.0, ws,
                  VECTOR_THREADS_BYTES)


def uses_rows(m, n, k):
    """Whether ``(m x k) @ (k x n)`` takes the row entry points (:func:`gemm_rows`, and
    :func:`fastdense.kernels.dense.forward_rows` / ``backward_rows`` for layers): one to
    :data:`ROWS_MAX` rows and no empty dimension.  Decided in Python, so that each kernel is
    compiled only when a program uses it."""
    return 0 < m <= ROWS_MAX and n > 0 and k > 0
