// @dsv3/model: The DeepSeek-V3 network from a Hugging Face config and checkpoint.
// Not built yet: this package exports nothing until its issue lands.
export {};
