export { openImage, describeContent } from "./formats/detect.ts";
export type { Image, ImageInfo, InfoField, DataRun, UsedRun, ReadOptions } from "./formats/image.ts";
export { restoreImage, type RestoreOptions, type RestoreResult } from "./commands/restore.ts";
export { verifyImage, type VerifyResult } from "./commands/verify.ts";
export { openStream, type OpenedStream } from "./source/open.ts";
export { ImageError, ChecksumError, UsageError, EXIT } from "./errors.ts";
