{
  "targets": [
    {
      "target_name": "dsv3_mpi",
      "sources": ["native/mpi.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "<!@(mpicc -showme:incdirs)"],
      "libraries": ["<!@(mpicc -showme:link)"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-O2"],
      "cflags_cc!": ["-fno-exceptions"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS", "OMPI_SKIP_MPICXX=1", "MPICH_SKIP_MPICXX=1"]
    }
  ]
}
