"""Data-parallel GAN training with gan_kernels: a StyleGAN-like G and D (equalized-LR layers, pixel
norm, minibatch stddev) with lazy R1, on a small synthetic data set, one process per CPU or GPU.

    torchrun --nproc_per_node=2 examples/distributed.py               # CPU: gloo; GPUs: nccl
    torchrun --nproc_per_node=2 examples/distributed.py --loop all_reduce

--loop ddp (default) wraps G and D in DistributedDataParallel; --loop all_reduce keeps plain
modules, starts every rank from rank 0's state with gan_kernels.distributed.broadcast_state and
averages gradients with all_reduce_gradients (StyleGAN3's way). Prints per-step times on rank 0
and checks at the end that every rank holds identical parameters (exit status 1 if not).
"""

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gan_kernels import penalties  # noqa: E402
from gan_kernels.distributed import all_reduce_gradients, broadcast_state  # noqa: E402
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchStd, PixelNorm  # noqa: E402

Z_DIM = 32
IMAGE_SIZE = 8


def synthetic_images(count, seed=0):
    """[count, 1, 8, 8] in about [-1, 1]: a Gaussian blob of random width at a random position on a
    dark background, the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, 1, 1, generator=gen) * (IMAGE_SIZE - 3) + 1.5
    widths = 0.8 + 1.2 * torch.rand(count, 1, 1, generator=gen)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32)
    dy = coords.view(1, -1, 1) - centres[:, 0]
    dx = coords.view(1, 1, -1) - centres[:, 1]
    blobs = torch.exp(-(dx.square() + dy.square()) / (2 * widths.square()))
    return (2 * blobs - 1).unsqueeze(1)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.mapping = nn.Sequential(
            PixelNorm(),
            EqualizedLinear(Z_DIM, 64, activation="lrelu", lr_multiplier=0.01),
            EqualizedLinear(64, 64, activation="lrelu", lr_multiplier=0.01),
        )
        self.const = EqualizedLinear(64, 32 * 4 * 4, activation="lrelu")
        self.synthesis = nn.Sequential(
            PixelNorm(),
            EqualizedConv2d(32, 32, 3, activation="lrelu"),
            nn.Upsample(scale_factor=2),
            PixelNorm(),
            EqualizedConv2d(32, 16, 3, activation="lrelu"),
            EqualizedConv2d(16, 1, 1),
        )

    def forward(self, z):
        return self.synthesis(self.const(self.mapping(z)).view(-1, 32, 4, 4))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            EqualizedConv2d(1, 16, 1, activation="lrelu"),
            EqualizedConv2d(16, 32, 3, activation="lrelu"),
            nn.AvgPool2d(2),
            # Groups within each rank's batch, as StyleGAN's multi-GPU training does.
            MinibatchStd(group_size=4),
            EqualizedConv2d(33, 32, 3, activation="lrelu"),
        )
        self.head = nn.Sequential(EqualizedLinear(32 * 4 * 4, 64, activation="lrelu"), EqualizedLinear(64, 1))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=["ddp", "all_reduce"], default="ddp")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16, help="samples per rank and step (a multiple of 4)")
    parser.add_argument("--r1-gamma", type=float, default=1.0)
    parser.add_argument("--r1-interval", type=int, default=4, help="lazy R1: every this many steps")
    parser.add_argument("--print-every", type=int, default=10)
    return parser.parse_args(argv)


def gather_parameters(modules):
    """This rank's parameters of `modules` flattened into one tensor, and every rank's."""
    flat = torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return flat, gathered


def main(argv=None):
    args = parse_args(argv)
    if args.batch % 4:
        raise SystemExit(f"--batch must be a multiple of the minibatch-stddev group size 4, got {args.batch}")
    if "RANK" not in os.environ:
        raise SystemExit("start it with torchrun, e.g. torchrun --nproc_per_node=2 examples/distributed.py")
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        # torchrun's ranks share the machine's cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    # Each rank builds its models from its own seed: DDP's constructor or broadcast_state makes
    # them rank 0's, so nothing relies on every rank seeding alike.
    torch.manual_seed(rank)
    G, D = Generator().to(device), Discriminator().to(device)
    lazy = penalties.LazyRegularizer(args.r1_interval)
    d_lr, d_betas = lazy.adam_hyperparameters(0.0025, (0.0, 0.99))
    opt_g = torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=d_lr, betas=d_betas)

    # The process group after the optimizers: their construction imports torch._dynamo, and through it
    # torch.distributed.nn.functional, whose collectives default to `group=group.WORLD`. Python
    # evaluates that at import: after init_process_group, the default group itself, which then outlives
    # destroy_process_group, its gloo threads too, to the interpreter's exit (torch 2.13).
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if args.loop == "ddp":
        G_train, D_train = DistributedDataParallel(G), DistributedDataParallel(D)
    else:
        broadcast_state(G)
        broadcast_state(D)
        G_train, D_train = G, D

    # Every rank draws its own share of the data set and its own noise.
    shard = synthetic_images(1024)[rank::world_size].to(device)
    gen = torch.Generator(device=device).manual_seed(1000 + rank)

    if rank == 0:
        print(
            f"{world_size} ranks on {device.type} ({dist.get_backend()}), loop {args.loop}, "
            f"batch {args.batch} per rank ({args.batch * world_size} in all), lazy R1 every {args.r1_interval}"
        )

    def d_step(loss):
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        if args.loop == "all_reduce":
            all_reduce_gradients(D)
        opt_d.step()

    times = []
    for step in range(args.steps):
        if use_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        real = shard[torch.randint(len(shard), (args.batch,), device=device, generator=gen)]
        z = torch.randn(args.batch, Z_DIM, device=device, generator=gen)

        # D step: the adversarial loss; lazily, R1 as a step of its own (StyleGAN2's Dmain and Dreg
        # phases, which the Adam correction above accounts for). penalties.r1 on the DDP module adds
        # 0 * logits, so that DDP reduces that backward too.
        with torch.no_grad():  # D's step needs no graph of G
            fake = G(z)
        loss_d = nn.functional.softplus(D_train(fake)).mean() + nn.functional.softplus(-D_train(real)).mean()
        d_step(loss_d)
        reg = lazy(step, penalties.r1, D_train, real, args.r1_gamma)  # at the weights Dmain left
        if reg is not None:
            d_step(reg)

        # G step through D's plain module with its parameters frozen: G's step needs no gradient of
        # D, so none is computed or all-reduced (DDP's D would also work, at that extra cost).
        D.requires_grad_(False)
        loss_g = nn.functional.softplus(-D(G_train(z))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if args.loop == "all_reduce":
            all_reduce_gradients(G)
        opt_g.step()
        D.requires_grad_(True)

        if use_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if rank == 0 and (step + 1) % args.print_every == 0:
            recent = times[-args.print_every :]
            print(
                f"step {step + 1:4d}  {1000 * sum(recent) / len(recent):7.1f} ms/step"
                f"  loss_d {loss_d.item():.3f}  loss_g {loss_g.item():.3f}",
                flush=True,
            )

    flat, gathered = gather_parameters([G, D])
    identical = all(torch.equal(other, flat) for other in gathered)
    if rank == 0:
        median = sorted(times)[len(times) // 2]
        print(f"median {1000 * median:.1f} ms/step; parameters identical on all {world_size} ranks: {identical}")
    # The DDP wrappers hold the process group: without them, destroy_process_group shuts gloo down
    # here, rather than leaving the last reference to the end of main or to the interpreter's exit.
    del G_train, D_train
    dist.destroy_process_group()
    # Only now, with gloo's threads gone: a worker thread lets go of a collective's tensors a moment
    # after the call has returned, and if it then held their last reference it would need the GIL to
    # free them, which at the interpreter's exit aborts the process.
    del flat, gathered
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
