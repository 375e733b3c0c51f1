"""The CPU backend: numba kernels of the fused neuron (neuron.py launches neuron_kernels.py) and of the fused stem
(spike_pool.py launches spike_pool_kernels.py), numba's thread pool as they use it (threads.py), and what the
launchers share (launch.py). Nothing here imports numba until a kernel runs: numba is optional."""
