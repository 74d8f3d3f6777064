{
  "targets": [
    {
      "target_name": "dsv3_kernels",
      "sources": ["native/kernels.cc", "native/f32-macro.cc", "native/i16-gemm.cc", "native/gemv.cc", "native/head-screen.cc", "native/huge-pages.cc", "native/map-file.cc", "native/fp8-quantize.cc", "native/trim-heap.cc"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-Wno-maybe-uninitialized"],
      "cflags_cc!": ["-O2"],
      "xcode_settings": { "OTHER_CPLUSPLUSFLAGS": ["-std=c++17", "-O3", "-ffp-contract=off"] },
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
