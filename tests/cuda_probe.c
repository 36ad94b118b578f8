/* ctest "cuda_device": exit 0 when a CUDA device is usable, else say why and
 * exit 77, which ctest reports as a skipped test: a machine without a GPU
 * shows in the summary that the GPU half of test_backend_cuda did not run. */
#include <cuda_runtime_api.h>
#include <stdio.h>

int main(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        printf("SKIPPED: no usable CUDA device (%s): the GPU tests of test_backend_cuda skip; "
               "run scripts/gpu-check.sh on a GPU machine\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 77;
    }
    printf("%d CUDA device(s)\n", n);
    return 0;
}
