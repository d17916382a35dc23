// NoAutocast: held by every heat_fast_C kernel entry point. Called inside a torch.autocast
// region, an op's inner ATen calls (at::mm for its products, .to() for its casts) would
// themselves be autocast to bfloat16/float16 while the kernels around them read the float32
// buffers the op chose; this guard keeps them out of autocast for the op's duration.
#pragma once

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace heat_fast {

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

}  // namespace heat_fast
