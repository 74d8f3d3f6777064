// @dsv3/train: Training loop for DeepSeek-V3-architecture models.
// Not built yet: this package exports nothing until its issue lands.
export {};
