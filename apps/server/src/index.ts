// apps/server: the inference server (scheduler, prefill/decode, SSE streaming) lands with @dsv3/serve.
// Not built yet.
export {};
