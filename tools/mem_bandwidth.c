// Streaming read bandwidth of one core (the ceiling for a decoding matvec): sums 256 MB with
// AVX2 loads, five times. Two cores: run two at once.
//   gcc -O2 -mavx2 tools/mem_bandwidth.c -o /tmp/bw && /tmp/bw     (or: /tmp/bw & /tmp/bw; wait)
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>
int main(){ size_t n=(size_t)256<<20; char*a=aligned_alloc(64,n); memset(a,1,n);
 for(int rep=0;rep<5;rep++){ struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
 __m256i s0=_mm256_setzero_si256(),s1=s0,s2=s0,s3=s0;
 for(size_t i=0;i<n;i+=128){ s0=_mm256_add_epi8(s0,_mm256_load_si256((__m256i*)(a+i))); s1=_mm256_add_epi8(s1,_mm256_load_si256((__m256i*)(a+i+32)));s2=_mm256_add_epi8(s2,_mm256_load_si256((__m256i*)(a+i+64)));s3=_mm256_add_epi8(s3,_mm256_load_si256((__m256i*)(a+i+96)));}
 clock_gettime(CLOCK_MONOTONIC,&t1); double s=(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)*1e-9;
 s0=_mm256_add_epi8(_mm256_add_epi8(s0,s1),_mm256_add_epi8(s2,s3)); printf("%.1f GB/s (%d)\n", n/s/1e9, _mm256_extract_epi8(s0,0)); }}
