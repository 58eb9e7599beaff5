// NBD wire format: the numbers of the protocol (NetworkBlockDevice/nbd,
// doc/proto.md) and big-endian encoding helpers. Everything on the wire is
// in network byte order.
#pragma once

#include <endian.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgestor::nbd {

// ---- Handshake ----
inline constexpr uint64_t kInitMagic = 0x4e42444d41474943ull;    // "NBDMAGIC"
inline constexpr uint64_t kOptionMagic = 0x49484156454f5054ull;  // "IHAVEOPT"
inline constexpr uint64_t kOptionReplyMagic = 0x3e889045565a9ull;

inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;  // handshake flags
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;  // client flags
inline constexpr uint32_t kClientNoZeroes = 1 << 1;
inline constexpr uint32_t kKnownClientFlags = kClientFixedNewstyle | kClientNoZeroes;

// Transmission flags.
inline constexpr uint16_t kFlagHasFlags = 1 << 0;
inline constexpr uint16_t kFlagReadOnly = 1 << 1;
inline constexpr uint16_t kFlagSendFlush = 1 << 2;
inline constexpr uint16_t kFlagSendFua = 1 << 3;
inline constexpr uint16_t kFlagSendTrim = 1 << 5;
inline constexpr uint16_t kFlagSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kFlagSendDf = 1 << 7;
inline constexpr uint16_t kFlagCanMultiConn = 1 << 8;
inline constexpr uint16_t kFlagSendFastZero = 1 << 11;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

enum OptionReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = 0x80000001,
  kRepErrPolicy = 0x80000002,
  kRepErrInvalid = 0x80000003,
  kRepErrUnknown = 0x80000006,
  kRepErrShutdown = 0x80000007,
  kRepErrTooBig = 0x80000009,
};

enum Info : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// ---- Transmission ----
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;
inline constexpr size_t kRequestHeaderBytes = 28;
inline constexpr size_t kSimpleReplyBytes = 16;
inline constexpr size_t kChunkHeaderBytes = 20;

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

inline constexpr uint16_t kReplyFlagDone = 1 << 0;
enum ChunkType : uint16_t {
  kChunkNone = 0,
  kChunkOffsetData = 1,
  kChunkBlockStatus = 5,
  kChunkError = 0x8001,
};

// Error values of the protocol (the common Linux errno numbers).
enum Error : uint32_t {
  kEperm = 1,
  kEio = 5,
  kEnomem = 12,
  kEinval = 22,
  kEnospc = 28,
  kEoverflow = 75,
  kEnotsup = 95,
  kEshutdown = 108,
};

// base:allocation flags; its context id (any non-zero value we choose).
inline constexpr uint32_t kStateHole = 1 << 0;
inline constexpr uint32_t kStateZero = 1 << 1;
inline constexpr uint32_t kBaseAllocationContextId = 1;
inline constexpr std::string_view kBaseAllocation = "base:allocation";

// Strings (export names, queries, messages) are at most this long.
inline constexpr size_t kMaxStringBytes = 4096;

// Stores big-endian fields into fixed buffers (reply headers on the data
// path, with no allocation).
inline void Put16(uint8_t* p, uint16_t v) { v = htobe16(v); std::memcpy(p, &v, sizeof v); }
inline void Put32(uint8_t* p, uint32_t v) { v = htobe32(v); std::memcpy(p, &v, sizeof v); }
inline void Put64(uint8_t* p, uint64_t v) { v = htobe64(v); std::memcpy(p, &v, sizeof v); }

// Appends big-endian fields to a byte vector (handshake messages).
class WireWriter {
 public:
  void U16(uint16_t v) { Raw(htobe16(v)); }
  void U32(uint32_t v) { Raw(htobe32(v)); }
  void U64(uint64_t v) { Raw(htobe64(v)); }
  void Bytes(std::string_view s) { out_.insert(out_.end(), s.begin(), s.end()); }
  void Zeroes(size_t n) { out_.insert(out_.end(), n, 0); }
  const std::vector<uint8_t>& bytes() const { return out_; }
  size_t size() const { return out_.size(); }

 private:
  template <typename T>
  void Raw(T v) {
    // resize + memcpy rather than insert: GCC 12 at -O3 misreads the
    // latter as an overflow (-Wstringop-overflow).
    size_t at = out_.size();
    out_.resize(at + sizeof v);
    std::memcpy(out_.data() + at, &v, sizeof v);
  }
  std::vector<uint8_t> out_;
};

// Reads big-endian fields from a byte span; every read is bounds-checked and
// a failed one leaves ok() false for good (no partial values escape).
class WireReader {
 public:
  explicit WireReader(std::span<const uint8_t> in) : in_(in) {}
  bool U16(uint16_t* v) { return Raw(v) && (*v = be16toh(*v), true); }
  bool U32(uint32_t* v) { return Raw(v) && (*v = be32toh(*v), true); }
  bool U64(uint64_t* v) { return Raw(v) && (*v = be64toh(*v), true); }
  bool String(size_t len, std::string* s) {
    if (!Take(len)) return false;
    s->assign(reinterpret_cast<const char*>(in_.data() + pos_ - len), len);
    return true;
  }
  size_t remaining() const { return in_.size() - pos_; }
  bool ok() const { return ok_; }

 private:
  bool Take(size_t n) {
    if (!ok_ || n > remaining()) return ok_ = false;
    pos_ += n;
    return true;
  }
  template <typename T>
  bool Raw(T* v) {
    if (!Take(sizeof *v)) return false;
    std::memcpy(v, in_.data() + pos_ - sizeof *v, sizeof *v);
    return true;
  }
  std::span<const uint8_t> in_;
  size_t pos_ = 0;
  bool ok_ = true;
};

}  // namespace edgestor::nbd
