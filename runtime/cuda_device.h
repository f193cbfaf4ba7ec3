/* runtime/cuda_device.h — the CUDA platform a kernel file is written against, in both builds:
 * nvcc with the toolkit's headers, or the host compiler with the emulated device
 * (runtime/cuda_emu/, `make CUDA=emu`, VS_CUDA_EMU defined). Kernel files include this instead of
 * cuda_runtime.h, cuda_bf16.h, cublas_v2.h, cublasLt.h, cudnn.h and mma.h (nvcuda::wmma), and write the two constructs whose syntax only nvcc
 * knows through these macros, so both builds compile the same kernel text:
 *   VS_LAUNCH(kernel, grid, block, smem, stream, args...)   kernel<<<grid, block, smem, stream>>>(args...)
 *   VS_DYNAMIC_SHARED(T, name);                              extern __shared__ __align__(128) T name[];
 * (128-byte aligned: wmma tiles need 32 bytes, and a kernel may carve its shared memory into
 * arrays of any type). */
#ifndef VS_RT_CUDA_DEVICE_H
#define VS_RT_CUDA_DEVICE_H

#ifdef VS_CUDA_EMU
#include "runtime/cuda_emu/cuda_emu.h"
#define VS_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    cuda_emu_launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)
#define VS_DYNAMIC_SHARED(T, name) VS_EMU_DYNAMIC_SHARED(T, name)
#else
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <mma.h>
#define VS_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#define VS_DYNAMIC_SHARED(T, name) extern __shared__ __align__(128) T name[]
#endif

#endif
