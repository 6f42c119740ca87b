"""Bytes sent per step by MePropDataParallel, relative to a dense all-reduce (skipped without torch).

One rank (a one-process gloo group on an in-memory store): the sizes of the
collectives do not depend on the number of ranks for the globally unified
selection, so the ratio tracked here is the one every P sees.  Step times on
several processes: ``scripts/distributed_bytes.py``.
"""


class UnifiedBytes:
    """Bytes per step of the globally unified reduction as % of the dense gradient's."""

    params = ([(500, 20), (4096, 64)],)
    param_names = ["width_k"]

    def setup(self, width_k):
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise NotImplementedError("PyTorch is not installed (pip install 'meprop_numba[torch]')") from None
        import datetime

        from meprop_numba.torch import MePropLinear
        from meprop_numba.torch.distributed import MePropDataParallel

        width, k = width_k
        if not dist.is_initialized():
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1,
                                    timeout=datetime.timedelta(seconds=60))
        x = torch.randn(16, width)
        self.sent = {}
        for kind in ("dense", "unified"):
            layer = MePropLinear(width, width, k=None if kind == "dense" else k, selection="unified")
            dp = MePropDataParallel(torch.nn.Sequential(layer))
            dp.bytes_sent.clear()
            dp(x).square().sum().backward()
            self.sent[kind] = sum(dp.bytes_sent.values())
            dp.unwrap()

    def track_percent_of_dense(self, width_k):
        return 100 * self.sent["unified"] / self.sent["dense"]

    track_percent_of_dense.unit = "%"
