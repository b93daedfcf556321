"""Python launchers for the csrc builds: ``pygen._C`` (CPU tensors) and ``pygen._cuda`` (CUDA
tensors). One module per family with the functions of the launcher contract
(docs/ARCHITECTURE.md): they take tensors, allocate nothing, pass data pointers, sizes, strides, a
dtype code and the current stream (or the thread count) to the compiled module, and return None.
"""
