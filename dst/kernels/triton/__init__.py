"""The CUDA backend: Triton kernels of the fused neuron (neuron.py launches neuron_kernels.py) and of the fused stem
(spike_pool.py launches spike_pool_kernels.py), and what the launchers share (launch.py). Also runs on CPU tensors
under TRITON_INTERPRET=1, which is how the tests check it without a GPU. Nothing here imports Triton until a kernel
is launched."""
