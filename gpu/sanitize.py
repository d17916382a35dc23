"""Every native CUDA op on small odd shapes and every dtype (the HE loss unchunked and chunked,
in one chunk and in chunks of 16 classes), for compute-sanitizer memcheck.

    compute-sanitizer --tool memcheck --error-exitcode 1 python gpu/sanitize.py
"""
import torch

import heat_fast as hf


def main() -> None:
    gen = torch.Generator("cuda").manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for batch, classes, dim in ((1, 2, 1), (7, 10, 33), (33, 257, 65)):
            x = torch.randn(batch, dim, device="cuda", generator=gen).to(dtype).requires_grad_()
            w = torch.randn(classes, dim, device="cuda", generator=gen).to(dtype).requires_grad_()
            y = torch.randint(0, classes, (batch,), device="cuda", generator=gen)
            for reduction, chunked in (("mean", False), ("none", False), ("mean", 16),
                                       ("none", True)):
                loss = hf.he_cross_entropy(x, w, y, reduction=reduction, label_smoothing=0.1,
                                           backend="native", chunked=chunked)
                torch.autograd.grad(loss.sum(), (x, w))
        for shape in ((1, 1), (3, 5, 7), (2, 3, 67, 67)):
            x_nat = torch.rand(shape, device="cuda", generator=gen).to(dtype)
            grad = torch.randn(shape, device="cuda", generator=gen).to(dtype)
            for norm in ("linf", "l2"):
                x_adv = hf.random_init(x_nat, 0.1, norm, generator=gen, backend="native")
                hf.pgd_step(x_adv, grad, x_nat, 0.1, 0.02, norm, out=x_adv, backend="native")
    torch.cuda.synchronize()
    print("sanitize: every native CUDA op ran")


if __name__ == "__main__":
    main()
