// Portability macros shared by host (C++) and device (CUDA) code.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FM_HOST_DEVICE inline
#endif
