// Instruction throughput of vdpbf16ps (AVX-512 BF16) against vfmadd231ps on zmm registers,
// one core, 12 independent sums each: whether a bf16 dot-product kernel can beat f32 FMA on
// this CPU (docs/benchmarks.md, the model-207 Xeon section).
//
//   gcc -O3 -funroll-all-loops -mavx512f -mavx512bf16 benches/dpbf16_throughput.c -o /tmp/dpbf16 && /tmp/dpbf16
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
  long N=200000000;
  __m512 acc[12]; for(int i=0;i<12;i++) acc[i]=_mm512_set1_ps(0.f);
  __m512bh a=(__m512bh)_mm512_set1_epi32(0x3f803f80), b=(__m512bh)_mm512_set1_epi32(0x3f803f80);
  double t=now();
  for(long i=0;i<N/12;i++){
    for(int j=0;j<12;j++) acc[j]=_mm512_dpbf16_ps(acc[j],a,b);
    __asm__ volatile("" : "+v"(a));
  }
  double d=now()-t; float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(acc[i]);
  printf("vdpbf16ps: %.2f G instr/s, %.1f GFLOP/s (%g)\n", N/d/1e9, N*64/d/1e9, s);
  __m512 x=_mm512_set1_ps(1.0001f), y=_mm512_set1_ps(0.9999f);
  for(int i=0;i<12;i++) acc[i]=_mm512_set1_ps(0.f);
  t=now();
  for(long i=0;i<N/12;i++){
    for(int j=0;j<12;j++) acc[j]=_mm512_fmadd_ps(x,y,acc[j]);
    __asm__ volatile("" : "+v"(x));
  }
  d=now()-t; s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(acc[i]);
  printf("vfmadd231ps: %.2f G instr/s, %.1f GFLOP/s (%g)\n", N/d/1e9, N*32/d/1e9, s);
}
