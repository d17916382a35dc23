// Matrix products of bfloat16 operands with float32 accumulation and output, on CPUs with
// AVX512_BF16, for the large-class HE loss (he_loss_chunked.cpp). vdpbf16ps forms each
// bf16 × bf16 product exactly in float32 and adds it in float32, so a product of 16-bit inputs
// costs half a float32 one here with float32 math. torch has no such product on the CPU (at::mm
// of bf16 rounds its output to bf16; MKL's cblas_gemm_bf16bf16f32 runs float32 kernels on CPUs
// that are not Intel's: measured on a 2-core AMD EPYC, slower than float32 sgemm).
//
// Operands are packed as "pairs": two consecutive values along the inner dimension in one 32-bit
// word, the lower index in the low half, as vdpbf16ps reads them. Each output element is summed
// in inner order by one call, so results do not depend on how callers split the work.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <vector>

namespace heat_fast::cpu::bf16 {

// Whether the kernels run here: an x86-64 GCC build, a CPU with AVX512_BF16, and
// HEAT_FAST_CPU_ISA not capping the kernels below avx512 (isa.h).
bool available();

// Rows of an output tile (the left operand's panel width) and columns of the right operand's.
constexpr int64_t kTileRows = 12;
constexpr int64_t kPanelCols = 32;

// An operand in panels of `width` lanes along its outer dimension: word
// panels[(i / width) · panel_words + kp · width + i % width] pairs the elements (i, 2kp) and
// (i, 2kp + 1), where i runs over the outer dimension (zero past either edge). A single panel
// of any width (panel_words unused) is an outer dimension of `width` lanes.
struct Packed {
  std::vector<uint32_t> words;
  int64_t outer = 0, pairs = 0, width = 0;

  int64_t panel_words() const { return pairs * width; }
  const uint32_t* panel(int64_t index) const { return words.data() + index * panel_words(); }
};

// Packs src (T = float, rounded to bf16 to nearest even, or c10::BFloat16) in panels of
// `width`, where the operand's element (i, k) is
//   src[k · ld + i] for along_rows (the inner dimension runs down src's rows), or
//   src[i · ld + k] otherwise (it runs along them),
// for i < outer, k < inner.
template <typename T>
void pack(const T* src, int64_t ld, bool along_rows, int64_t outer, int64_t inner,
          int64_t width, Packed& out);

// The left operand of a product, rows × (2 · pairs): either packed (width kTileRows, or a single
// panel of a multiple of kTileRows lanes), or bf16 rows read in place (row stride ld, even, and
// an even inner size).
struct Left {
  static Left packed(const Packed& p);
  static Left rows(const c10::BFloat16* a, int64_t ld, int64_t rows, int64_t inner);

  const uint32_t* words;
  int64_t outer, pairs;  // rows and pairs per row
  bool in_place;
  int64_t stride;  // words between rows (in place) or between pairs (packed)
  int64_t tile_stride;  // words between tiles of kTileRows rows
};

// out (rows × cols, row stride ldo) = A · B (+ out when accumulate), for B packed with width
// kPanelCols (cols = its outer size) and as many pairs as A.
void gemm(const Left& a, const Packed& b, float* out, int64_t ldo, bool accumulate);

}  // namespace heat_fast::cpu::bf16
