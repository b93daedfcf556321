"""Python launchers for the csrc builds: ``pygen._C`` (CPU tensors) and ``pygen._cuda`` (CUDA
tensors). One module per family with the functions of the launcher contract
(docs/ARCHITECTURE.md): each is one ``pygen._ext.call`` (which passes data pointers, sizes,
strides, a dtype code and the current stream, or the thread count, to the compiled module), plus
at most an adapter that is not a check (RoI's FPN thresholds, MoE's compute-dtype weights); they
return None.
"""
