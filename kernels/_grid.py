"""Where a Triton program's work lies in its launch grid: the device helpers the families share.

``program_block(AXIS, n, BLOCK)``: the BLOCK indices ``pid * BLOCK + [0, BLOCK)`` of this program
along grid axis AXIS of a size-n dimension, and their mask (< n).

``grouped_tile(tile, num_m, num_n, GROUP_M)``: (tile row, tile column) of the ``tile``-th output
tile of a [num_m, num_n] tile grid in grouped order: GROUP_M consecutive row tiles share each column
tile, so the programs running at the same time reuse the same B columns from L2 (Triton's
matmul tutorial order). ``tile`` is the program id, or a persistent program's work unit.
"""

import triton
import triton.language as tl


@triton.jit
def program_block(AXIS: tl.constexpr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(AXIS) * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < n


@triton.jit
def grouped_tile(tile, num_m, num_n, GROUP_M: tl.constexpr):
    per_group = GROUP_M * num_n
    first_m = (tile // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % per_group) % size_m, (tile % per_group) // size_m
