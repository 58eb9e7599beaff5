// Option haggling (fixed newstyle). Every option gets a reply; only a broken
// stream (bad magic, unknown client flags, a failed NBD_OPT_EXPORT_NAME)
// ends the session without one, as the protocol allows.
#include "frontend/nbd/nbd_handshake.h"

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <optional>
#include <string>
#include <vector>

#include "frontend/nbd/nbd_protocol.h"
#include "frontend/nbd/nbd_socket.h"

namespace edgestor::nbd {

namespace {

// Option payloads larger than this are dropped with NBD_REP_ERR_TOO_BIG:
// the largest legitimate one (GO: a 4 KiB name and a few info requests, or
// a handful of meta-context queries) is far smaller.
constexpr uint32_t kMaxOptionBytes = 64 * 1024;
// Options per connection before we hang up on a client that never ends
// haggling.
constexpr uint32_t kMaxOptions = 1024;
// A client silent this long during the handshake is dropped.
constexpr int kHandshakeIdleTimeoutMs = 30'000;
constexpr size_t kExportNameReplyZeroes = 124;
constexpr std::string_view kDescription = "edgestor thin volume";

uint32_t ErrorReplyFor(int code) {
  switch (code) {
    case ENOENT: return kRepErrUnknown;
    case ESHUTDOWN: return kRepErrShutdown;
    default: return kRepErrPolicy;
  }
}

class Negotiation {
 public:
  Negotiation(int fd, ExportProvider& provider, const NbdServerOptions& options, const std::atomic<bool>& stopping)
      : fd_(fd), provider_(provider), options_(options), stopping_(stopping) {}

  Result<NbdSession> Run() {
    ES_RETURN_IF_ERROR(Greet());
    for (uint32_t count = 0; count < kMaxOptions; count++) {
      ES_RETURN_IF_ERROR(NextOption());
      if (session_) return *session_;
    }
    return Status(EPROTO, "client sent too many options");
  }

 private:
  Status Greet() {
    WireWriter w;
    w.U64(kInitMagic);
    w.U64(kOptionMagic);
    w.U16(kFlagFixedNewstyle | kFlagNoZeroes);
    ES_RETURN_IF_ERROR(WriteAll(fd_, w.bytes().data(), w.size()));
    uint32_t client_flags = 0;
    ES_RETURN_IF_ERROR(ReadExact(fd_, &client_flags, sizeof client_flags, stopping_, kHandshakeIdleTimeoutMs));
    client_flags = be32toh(client_flags);
    if (client_flags & ~kKnownClientFlags) return Status(EPROTO, "client sent unknown flags");
    no_zeroes_ = client_flags & kClientNoZeroes;
    return Status::Ok();
  }

  // Reads one option and answers it.
  Status NextOption() {
    uint8_t raw[16];
    ES_RETURN_IF_ERROR(ReadExact(fd_, raw, sizeof raw, stopping_, kHandshakeIdleTimeoutMs));
    WireReader header(raw);
    uint64_t magic = 0;
    uint32_t option = 0, length = 0;
    (void)(header.U64(&magic) && header.U32(&option) && header.U32(&length));
    assert(header.ok());
    if (magic != kOptionMagic) return Status(EPROTO, "bad option magic");
    if (length > kMaxOptionBytes) {
      // NBD_OPT_EXPORT_NAME has no error reply: the session must end.
      if (option == kOptExportName) return Status(EPROTO, "export name too long");
      ES_RETURN_IF_ERROR(Discard(fd_, length, stopping_, kHandshakeIdleTimeoutMs));
      return ReplyError(option, kRepErrTooBig, "option data too large");
    }
    std::vector<uint8_t> data(length);
    ES_RETURN_IF_ERROR(ReadExact(fd_, data.data(), length, stopping_, kHandshakeIdleTimeoutMs));
    if (stopping_.load() && option != kOptAbort) return ReplyError(option, kRepErrShutdown, "server is stopping");
    return Dispatch(option, data);
  }

  Status Dispatch(uint32_t option, std::span<const uint8_t> data) {
    switch (option) {
      case kOptExportName: return ExportName(data);
      case kOptAbort:
        (void)Reply(option, kRepAck);  // the client may already be gone
        return Status(ECANCELED, "client aborted the handshake");
      case kOptList: return List(data);
      case kOptStartTls: return ReplyError(option, kRepErrPolicy, "TLS is not supported by this server");
      case kOptInfo:
      case kOptGo: return InfoOrGo(option, data);
      case kOptStructuredReply:
        if (!data.empty()) return ReplyError(option, kRepErrInvalid, "unexpected option data");
        structured_ = true;
        return Reply(option, kRepAck);
      case kOptListMetaContext:
      case kOptSetMetaContext: return MetaContext(option, data);
      default: return ReplyError(option, kRepErrUnsup, "option not supported");
    }
  }

  // NBD_OPT_EXPORT_NAME: enter transmission, or hang up (no error reply exists).
  Status ExportName(std::span<const uint8_t> data) {
    if (data.size() > kMaxStringBytes) return Status(EPROTO, "export name too long");
    std::string name(data.begin(), data.end());
    ES_ASSIGN_OR_RETURN(Volume * volume, Acquire(name));
    WireWriter w;
    w.U64(volume->size());
    w.U16(TransmissionFlags(*volume));
    if (!no_zeroes_) w.Zeroes(kExportNameReplyZeroes);
    Status s = WriteAll(fd_, w.bytes().data(), w.size());
    if (!s.ok()) {
      provider_.ReleaseExport(volume);
      return s;
    }
    // No block sizes were agreed: byte granularity (block_sizes_agreed false).
    session_ = NbdSession{volume, TransmissionFlags(*volume), structured_, BlockStatusFor(volume->name()), false};
    return Status::Ok();
  }

  Status List(std::span<const uint8_t> data) {
    if (!data.empty()) return ReplyError(kOptList, kRepErrInvalid, "unexpected option data");
    for (const std::string& name : provider_.ListExports()) {
      WireWriter w;
      w.U32(static_cast<uint32_t>(name.size()));
      w.Bytes(name);
      ES_RETURN_IF_ERROR(Reply(kOptList, kRepServer, w.bytes()));
    }
    return Reply(kOptList, kRepAck);
  }

  // NBD_OPT_INFO and NBD_OPT_GO share a request and replies; GO then enters
  // transmission.
  Status InfoOrGo(uint32_t option, std::span<const uint8_t> data) {
    WireReader r(data);
    uint32_t name_len = 0;
    uint16_t requests = 0;
    std::string name;
    if (!r.U32(&name_len) || name_len > kMaxStringBytes || !r.String(name_len, &name) || !r.U16(&requests) ||
        r.remaining() != 2u * requests)
      return ReplyError(option, kRepErrInvalid, "malformed request");
    bool want_name = false, want_description = false, want_block_size = false;
    for (uint16_t i = 0, type = 0; i < requests && r.U16(&type); i++) {
      want_name |= type == kInfoName;
      want_description |= type == kInfoDescription;
      want_block_size |= type == kInfoBlockSize;
    }
    auto volume = Acquire(name);
    if (!volume.ok()) return ReplyError(option, ErrorReplyFor(volume.status().code()), volume.status().message());
    Status s = SendInfo(option, *volume.value(), want_name, want_description);
    bool go = s.ok() && option == kOptGo;
    // INFO keeps nothing: the export is released before the client hears
    // the final reply.
    if (!go) provider_.ReleaseExport(volume.value());
    if (s.ok()) s = Reply(option, kRepAck);
    if (go && s.ok())
      session_ = NbdSession{volume.value(), TransmissionFlags(*volume.value()), structured_,
                            BlockStatusFor(volume.value()->name()), want_block_size};
    else if (go)
      provider_.ReleaseExport(volume.value());
    return s;
  }

  Status SendInfo(uint32_t option, Volume& volume, bool want_name, bool want_description) {
    WireWriter exp;
    exp.U16(kInfoExport);
    exp.U64(volume.size());
    exp.U16(TransmissionFlags(volume));
    ES_RETURN_IF_ERROR(Reply(option, kRepInfo, exp.bytes()));
    // Sent unasked too: clients that do not understand it ignore it, and
    // a client that did not ask is not bound by it.
    WireWriter sizes;
    sizes.U16(kInfoBlockSize);
    sizes.U32(kMinBlockBytes);
    sizes.U32(kPreferredBlockBytes);
    sizes.U32(MaxPayloadBytes(options_));
    ES_RETURN_IF_ERROR(Reply(option, kRepInfo, sizes.bytes()));
    if (want_name) {
      WireWriter w;
      w.U16(kInfoName);
      w.Bytes(volume.name());
      ES_RETURN_IF_ERROR(Reply(option, kRepInfo, w.bytes()));
    }
    if (want_description) {
      WireWriter w;
      w.U16(kInfoDescription);
      w.Bytes(kDescription);
      ES_RETURN_IF_ERROR(Reply(option, kRepInfo, w.bytes()));
    }
    return Status::Ok();
  }

  // NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: we know exactly one
  // context, base:allocation.
  Status MetaContext(uint32_t option, std::span<const uint8_t> data) {
    bool set = option == kOptSetMetaContext;
    if (set) meta_export_.reset();  // a SET replaces the selection even when it fails
    if (!structured_) return ReplyError(option, kRepErrInvalid, "negotiate structured replies first");
    WireReader r(data);
    uint32_t name_len = 0, count = 0;
    std::string name;
    if (!r.U32(&name_len) || name_len > kMaxStringBytes || !r.String(name_len, &name) || !r.U32(&count))
      return ReplyError(option, kRepErrInvalid, "malformed request");
    bool match = !set && count == 0;  // an empty LIST asks for every context
    for (uint32_t i = 0; i < count && r.ok(); i++) {
      uint32_t query_len = 0;
      std::string query;
      if (!r.U32(&query_len) || query_len > kMaxStringBytes || !r.String(query_len, &query)) break;
      match |= query == kBaseAllocation || (!set && query == "base:");
    }
    if (!r.ok() || r.remaining() != 0) return ReplyError(option, kRepErrInvalid, "malformed request");
    auto resolved = Resolve(name);
    if (!resolved.ok()) return ReplyError(option, kRepErrUnknown, resolved.status().message());
    if (match) {
      WireWriter w;
      w.U32(set ? kBaseAllocationContextId : 0);  // LIST replies carry no id
      w.Bytes(kBaseAllocation);
      ES_RETURN_IF_ERROR(Reply(option, kRepMetaContext, w.bytes()));
      if (set) meta_export_ = resolved.value();
    }
    return Reply(option, kRepAck);
  }

  // The export a name means: the empty name is the default export, which
  // exists when the pool has exactly one volume.
  Result<std::string> Resolve(const std::string& name) {
    if (name.empty()) {
      std::vector<std::string> exports = provider_.ListExports();
      if (exports.size() == 1) return exports.front();
      return Status(ENOENT, "no default export");
    }
    if (provider_.HasExport(name)) return name;
    return Status(ENOENT, "no export named '" + name + "'");
  }

  Result<Volume*> Acquire(const std::string& name) {
    ES_ASSIGN_OR_RETURN(std::string resolved, Resolve(name));
    return provider_.AcquireExport(resolved);
  }

  bool BlockStatusFor(const std::string& export_name) const {
    return structured_ && meta_export_ && *meta_export_ == export_name;
  }

  // A read-only export (a snapshot) offers no command that changes data.
  uint16_t TransmissionFlags(const Volume& volume) const {
    uint16_t flags = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagCanMultiConn;
    if (volume.read_only()) flags |= kFlagReadOnly;
    else flags |= kFlagSendTrim | kFlagSendWriteZeroes | kFlagSendFastZero;
    if (structured_) flags |= kFlagSendDf;  // one data chunk per read, always
    return flags;
  }

  Status Reply(uint32_t option, uint32_t type, std::span<const uint8_t> data = {}) {
    assert(data.size() <= kMaxOptionBytes);
    WireWriter w;
    w.U64(kOptionReplyMagic);
    w.U32(option);
    w.U32(type);
    w.U32(static_cast<uint32_t>(data.size()));
    iovec parts[2] = {{const_cast<uint8_t*>(w.bytes().data()), w.size()},
                      {const_cast<uint8_t*>(data.data()), data.size()}};
    return WriteAll(fd_, parts);
  }

  Status ReplyError(uint32_t option, uint32_t type, std::string_view message) {
    assert(type & 0x80000000u);
    message = message.substr(0, kMaxStringBytes);
    return Reply(option, type, std::span(reinterpret_cast<const uint8_t*>(message.data()), message.size()));
  }

  const int fd_;
  ExportProvider& provider_;
  const NbdServerOptions& options_;
  const std::atomic<bool>& stopping_;
  bool no_zeroes_ = false;
  bool structured_ = false;
  std::optional<std::string> meta_export_;  // export the selected base:allocation is for
  std::optional<NbdSession> session_;       // set when transmission begins
};

}  // namespace

uint32_t MaxPayloadBytes(const NbdServerOptions& options) {
  return std::clamp(options.max_request_bytes, kPreferredBlockBytes, kMaxPayloadBytes);
}

Result<NbdSession> Negotiate(int fd, ExportProvider& provider, const NbdServerOptions& options,
                             const std::atomic<bool>& stopping) {
  return Negotiation(fd, provider, options, stopping).Run();
}

}  // namespace edgestor::nbd
