// dsv3_mpi: a small N-API binding of the system MPI for @dsv3/parallel's `mpi` transport.
// Every operation is MPI's non-blocking form (MPI_Iallreduce, MPI_Ialltoallv, MPI_Isend, ...),
// started on the JS thread; JS polls completion with test(). Buffers stay referenced until done.
// Large all-reduces run on standing (persistent) requests over buffers this addon owns: MPI's
// collectives allocate their temporaries per call, and above glibc's 32 MiB mmap ceiling every call
// page-faults a fresh temporary in (measured: 16k faults and most of the time of a 64 MiB all-reduce).
#include <mpi.h>
#if defined(OPEN_MPI) && __has_include(<mpi-ext.h>)
#include <mpi-ext.h>
#endif
#include <napi.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#if MPI_VERSION >= 4
#define DSV3_ALLREDUCE_INIT MPI_Allreduce_init
#elif defined(OMPI_HAVE_MPI_EXT_PCOLLREQ) && OMPI_HAVE_MPI_EXT_PCOLLREQ
#define DSV3_ALLREDUCE_INIT MPIX_Allreduce_init
#endif

namespace {

// A persistent all-reduce over its own buffer, reused by every all-reduce of its communicator,
// dtype, op and count. Created, chosen and evicted in call order only (never by timing), so every
// rank makes the same choices and starts the same requests in the same order.
struct Standing {
  MPI_Comm comm;
  MPI_Datatype type;
  MPI_Op op;
  int count;
  size_t bytes;
  std::unique_ptr<uint8_t[]> buffer;
  MPI_Request request = MPI_REQUEST_NULL;
  bool busy = false;
  bool evicted = false;  // freed once its run completes
  uint64_t lastUse = 0;
};

constexpr size_t kStandingMinBytes = size_t{1} << 20;   // below this MPI's per-call temporaries are reused by malloc
constexpr size_t kStandingMaxBytes = size_t{512} << 20;  // buffers held at once, all standing requests together
std::vector<std::unique_ptr<Standing>> standing;
uint64_t standingClock = 0;

struct Pending {
  MPI_Request request;
  std::vector<Napi::ObjectReference> keep;  // buffers MPI reads or writes until completion
  std::vector<int> counts;                  // alltoallv count/displacement arrays must outlive the call
  Standing* standing = nullptr;             // copy its buffer back into `result` on completion
  void* result = nullptr;
};

std::map<int, std::unique_ptr<Pending>> pending;
std::vector<MPI_Comm> comms;
int nextRequest = 1;

void Check(Napi::Env env, int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Napi::Error::New(env, std::string(what) + " failed: " + std::string(msg, len));
}

MPI_Comm CommArg(const Napi::CallbackInfo& info, size_t i) {
  int h = info[i].As<Napi::Number>().Int32Value();
  if (h < 0 || h >= static_cast<int>(comms.size()) || comms[h] == MPI_COMM_NULL)
    throw Napi::RangeError::New(info.Env(), "unknown MPI communicator handle");
  return comms[h];
}

struct Buf {
  void* data;
  size_t bytes;
  Napi::Object obj;
};

Buf BufArg(const Napi::CallbackInfo& info, size_t i) {
  if (!info[i].IsTypedArray()) throw Napi::TypeError::New(info.Env(), "expected a typed array");
  auto ta = info[i].As<Napi::TypedArray>();
  auto ab = ta.ArrayBuffer();
  return {static_cast<uint8_t*>(ab.Data()) + ta.ByteOffset(), ta.ByteLength(), ta};
}

MPI_Datatype DType(Napi::Env env, const std::string& d) {
  if (d == "f32") return MPI_FLOAT;
  if (d == "f64") return MPI_DOUBLE;
  if (d == "i32") return MPI_INT;
  if (d == "u32") return MPI_UNSIGNED;
  if (d == "u8") return MPI_BYTE;
  throw Napi::TypeError::New(env, "unsupported MPI dtype " + d);
}

MPI_Op Op(Napi::Env env, const std::string& o) {
  if (o == "sum") return MPI_SUM;
  if (o == "prod") return MPI_PROD;
  if (o == "max") return MPI_MAX;
  if (o == "min") return MPI_MIN;
  throw Napi::TypeError::New(env, "unsupported MPI reduce op " + o);
}

Napi::Value Track(Napi::Env env, std::unique_ptr<Pending> p) {
  int id = nextRequest++;
  pending[id] = std::move(p);
  return Napi::Number::New(env, id);
}

std::unique_ptr<Pending> Keep(std::initializer_list<Napi::Object> objs) {
  auto p = std::make_unique<Pending>();
  for (auto& o : objs) p->keep.push_back(Napi::Persistent(o));
  return p;
}

Napi::Value Init(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int inited = 0;
  MPI_Initialized(&inited);
  int provided = 0;
  if (!inited) Check(env, MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (comms.empty()) comms.push_back(MPI_COMM_WORLD);
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  char version[MPI_MAX_LIBRARY_VERSION_STRING];
  int vlen = 0;
  MPI_Get_library_version(version, &vlen);
  int* tagUb = nullptr;
  int flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tagUb, &flag);
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", rank);
  o.Set("size", size);
  o.Set("library", std::string(version, vlen));
  o.Set("tagUpperBound", flag && tagUb ? *tagUb : 32767);
  return o;
}

// commCreate(parent, ranks: Int32Array) -> handle, or -1 on ranks outside the group. Collective over parent.
Napi::Value CommCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm parent = CommArg(info, 0);
  auto ranks = info[1].As<Napi::Int32Array>();
  MPI_Group pg, g;
  MPI_Comm_group(parent, &pg);
  Check(env, MPI_Group_incl(pg, static_cast<int>(ranks.ElementLength()), ranks.Data(), &g), "MPI_Group_incl");
  MPI_Comm c;
  Check(env, MPI_Comm_create(parent, g, &c), "MPI_Comm_create");
  MPI_Group_free(&g);
  MPI_Group_free(&pg);
  if (c == MPI_COMM_NULL) return Napi::Number::New(env, -1);
  MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
  comms.push_back(c);
  return Napi::Number::New(env, static_cast<double>(comms.size() - 1));
}

void FreeStanding(Standing* s) {
  if (s->request != MPI_REQUEST_NULL) MPI_Request_free(&s->request);
  for (auto it = standing.begin(); it != standing.end(); ++it)
    if (it->get() == s) {
      standing.erase(it);
      return;
    }
}

size_t StandingBytes() {
  size_t held = 0;
  for (auto& s : standing)
    if (!s->evicted || s->busy) held += s->bytes;
  return held;
}

// The standing request for this all-reduce, created (evicting the least recently used) if none.
// Returns null when it is still running an earlier all-reduce: the caller starts this one later.
Standing* StandingFor(Napi::Env env, MPI_Comm c, MPI_Datatype t, MPI_Op op, int count, size_t bytes) {
  for (auto& s : standing)
    if (!s->evicted && s->comm == c && s->type == t && s->op == op && s->count == count) {
      if (s->busy) return nullptr;
      s->lastUse = ++standingClock;
      return s.get();
    }
  while (StandingBytes() + bytes > kStandingMaxBytes) {
    Standing* lru = nullptr;
    for (auto& s : standing)
      if (!s->evicted && (!lru || s->lastUse < lru->lastUse)) lru = s.get();
    if (!lru) break;  // everything left is evicted and still running: it frees itself on completion
    lru->evicted = true;
    if (!lru->busy) FreeStanding(lru);
  }
  auto s = std::make_unique<Standing>();
  s->comm = c;
  s->type = t;
  s->op = op;
  s->count = count;
  s->bytes = bytes;
  s->buffer.reset(new uint8_t[bytes]);
  s->lastUse = ++standingClock;
#ifdef DSV3_ALLREDUCE_INIT
  Check(env, DSV3_ALLREDUCE_INIT(MPI_IN_PLACE, s->buffer.get(), count, t, op, c, MPI_INFO_NULL, &s->request), "MPI_Allreduce_init");
#endif
  standing.push_back(std::move(s));
  return standing.back().get();
}

// iallreduce(comm, buf, dtype, op): in place. Returns the request id, or 0 when a standing request
// of the same shape is still busy (JS starts it again once that one completes, keeping call order).
Napi::Value Iallreduce(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf b = BufArg(info, 1);
  MPI_Datatype t = DType(env, info[2].As<Napi::String>());
  MPI_Op op = Op(env, info[3].As<Napi::String>());
  int es = 0;
  MPI_Type_size(t, &es);
  int count = static_cast<int>(b.bytes / es);
  auto p = Keep({b.obj});
#ifdef DSV3_ALLREDUCE_INIT
  if (b.bytes >= kStandingMinBytes && b.bytes <= kStandingMaxBytes) {
    Standing* s = StandingFor(env, c, t, op, count, b.bytes);
    if (!s) return Napi::Number::New(env, 0);
    std::memcpy(s->buffer.get(), b.data, b.bytes);
    Check(env, MPI_Start(&s->request), "MPI_Start");
    s->busy = true;
    p->request = s->request;
    p->standing = s;
    p->result = b.data;
    return Track(env, std::move(p));
  }
#endif
  Check(env, MPI_Iallreduce(MPI_IN_PLACE, b.data, count, t, op, c, &p->request), "MPI_Iallreduce");
  return Track(env, std::move(p));
}

// ireduceScatter(comm, input, output, dtype, op): output holds input/size elements.
Napi::Value IreduceScatter(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf in = BufArg(info, 1), out = BufArg(info, 2);
  MPI_Datatype t = DType(env, info[3].As<Napi::String>());
  int es = 0;
  MPI_Type_size(t, &es);
  auto p = Keep({in.obj, out.obj});
  Check(env, MPI_Ireduce_scatter_block(in.data, out.data, static_cast<int>(out.bytes / es), t, Op(env, info[4].As<Napi::String>()), c, &p->request),
        "MPI_Ireduce_scatter_block");
  return Track(env, std::move(p));
}

// iallgather(comm, input, output): bytes.
Napi::Value Iallgather(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf in = BufArg(info, 1), out = BufArg(info, 2);
  auto p = Keep({in.obj, out.obj});
  int n = static_cast<int>(in.bytes);
  Check(env, MPI_Iallgather(in.data, n, MPI_BYTE, out.data, n, MPI_BYTE, c, &p->request), "MPI_Iallgather");
  return Track(env, std::move(p));
}

// ialltoallv(comm, input, sendCounts, sendDispls, output, recvCounts, recvDispls): bytes.
Napi::Value Ialltoallv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf in = BufArg(info, 1), out = BufArg(info, 4);
  auto p = Keep({in.obj, out.obj});
  int size = 0;
  MPI_Comm_size(c, &size);
  p->counts.resize(4 * size);
  const int* arrays[4] = {info[2].As<Napi::Int32Array>().Data(), info[3].As<Napi::Int32Array>().Data(),
                          info[5].As<Napi::Int32Array>().Data(), info[6].As<Napi::Int32Array>().Data()};
  for (int a = 0; a < 4; a++)
    for (int i = 0; i < size; i++) p->counts[a * size + i] = arrays[a][i];
  int* k = p->counts.data();
  Check(env, MPI_Ialltoallv(in.data, k, k + size, MPI_BYTE, out.data, k + 2 * size, k + 3 * size, MPI_BYTE, c, &p->request), "MPI_Ialltoallv");
  return Track(env, std::move(p));
}

Napi::Value Ibcast(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf b = BufArg(info, 1);
  auto p = Keep({b.obj});
  Check(env, MPI_Ibcast(b.data, static_cast<int>(b.bytes), MPI_BYTE, info[2].As<Napi::Number>().Int32Value(), c, &p->request), "MPI_Ibcast");
  return Track(env, std::move(p));
}

Napi::Value Ibarrier(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  auto p = std::make_unique<Pending>();
  Check(env, MPI_Ibarrier(c, &p->request), "MPI_Ibarrier");
  return Track(env, std::move(p));
}

Napi::Value Isend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf b = BufArg(info, 1);
  auto p = Keep({b.obj});
  Check(env, MPI_Isend(b.data, static_cast<int>(b.bytes), MPI_BYTE, info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::Number>().Int32Value(), c, &p->request),
        "MPI_Isend");
  return Track(env, std::move(p));
}

Napi::Value Irecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MPI_Comm c = CommArg(info, 0);
  Buf b = BufArg(info, 1);
  auto p = Keep({b.obj});
  Check(env, MPI_Irecv(b.data, static_cast<int>(b.bytes), MPI_BYTE, info[2].As<Napi::Number>().Int32Value(), info[3].As<Napi::Number>().Int32Value(), c, &p->request),
        "MPI_Irecv");
  return Track(env, std::move(p));
}

// test() -> [[id, errorMessage|'', receivedBytes], ...] for every request that completed since the last call.
Napi::Value Test(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array done = Napi::Array::New(env);
  uint32_t n = 0;
  for (auto it = pending.begin(); it != pending.end();) {
    int flag = 0;
    MPI_Status st;
    int rc = MPI_Test(&it->second->request, &flag, &st);
    if (rc != MPI_SUCCESS || flag) {
      Napi::Array e = Napi::Array::New(env, 3);
      e.Set(0u, it->first);
      std::string err;
      if (rc != MPI_SUCCESS) {
        char msg[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(rc, msg, &len);
        err.assign(msg, len);
      }
      int bytes = -1;
      if (rc == MPI_SUCCESS) MPI_Get_count(&st, MPI_BYTE, &bytes);
      if (Standing* s = it->second->standing) {
        if (rc == MPI_SUCCESS) std::memcpy(it->second->result, s->buffer.get(), s->bytes);
        s->busy = false;
        if (s->evicted) FreeStanding(s);
      }
      e.Set(1u, err);
      e.Set(2u, bytes);
      done.Set(n++, e);
      it = pending.erase(it);
    } else {
      ++it;
    }
  }
  return done;
}

Napi::Value Pending_(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(pending.size()));
}

Napi::Value Finalize(const Napi::CallbackInfo& info) {
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) {
    while (!standing.empty()) FreeStanding(standing.back().get());
    for (size_t i = 1; i < comms.size(); i++)
      if (comms[i] != MPI_COMM_NULL) MPI_Comm_free(&comms[i]);
    MPI_Finalize();
  }
  return info.Env().Undefined();
}

Napi::Value Abort(const Napi::CallbackInfo& info) {
  MPI_Abort(MPI_COMM_WORLD, info[0].As<Napi::Number>().Int32Value());
  return info.Env().Undefined();
}

Napi::Object Module(Napi::Env env, Napi::Object exports) {
  exports.Set("init", Napi::Function::New(env, Init));
  exports.Set("commCreate", Napi::Function::New(env, CommCreate));
  exports.Set("iallreduce", Napi::Function::New(env, Iallreduce));
  exports.Set("ireduceScatter", Napi::Function::New(env, IreduceScatter));
  exports.Set("iallgather", Napi::Function::New(env, Iallgather));
  exports.Set("ialltoallv", Napi::Function::New(env, Ialltoallv));
  exports.Set("ibcast", Napi::Function::New(env, Ibcast));
  exports.Set("ibarrier", Napi::Function::New(env, Ibarrier));
  exports.Set("isend", Napi::Function::New(env, Isend));
  exports.Set("irecv", Napi::Function::New(env, Irecv));
  exports.Set("test", Napi::Function::New(env, Test));
  exports.Set("pending", Napi::Function::New(env, Pending_));
  exports.Set("finalize", Napi::Function::New(env, Finalize));
  exports.Set("abort", Napi::Function::New(env, Abort));
  return exports;
}

}  // namespace

NODE_API_MODULE(dsv3_mpi, Module)
