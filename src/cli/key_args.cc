#include "cli/key_args.h"

#include <fstream>
#include <iostream>

#include "cli/cli_error.h"
#include "codec/key_wrap.h"

namespace edgestor::cli {
namespace {

KeyArgs& Stored() {
  static KeyArgs args;
  return args;
}

// Longest passphrase we read; more is surely the wrong file.
constexpr size_t kMaxPassphraseBytes = 1024;

}  // namespace

void SetKeyArgs(const KeyArgs& args) { Stored() = args; }
const KeyArgs& GetKeyArgs() { return Stored(); }

PoolSecret LoadSecret(const KeyArgs& args) {
  PoolSecret secret;
  if (!args.keyfile.empty() && !args.passphrase_file.empty()) Fail("give either --keyfile or --passphrase-file, not both");
  if (!args.keyfile.empty()) {
    PoolKeyFile file = Unwrap(ReadPoolKeyFile(args.keyfile), "cannot use key file " + args.keyfile);
    if (file.group_readable || file.world_readable)
      std::cerr << "edgestor: warning: key file " << args.keyfile
                << " can be read by other users; chmod 600 it\n";
    secret.key.emplace(file.key.span());
  } else if (!args.passphrase_file.empty()) {
    std::ifstream in(args.passphrase_file);
    if (!in) Fail("cannot read passphrase file " + args.passphrase_file);
    std::getline(in, secret.passphrase);
    if (!secret.passphrase.empty() && secret.passphrase.back() == '\r') secret.passphrase.pop_back();
    if (secret.passphrase.empty()) Fail("passphrase file " + args.passphrase_file + " starts with an empty line");
    if (secret.passphrase.size() > kMaxPassphraseBytes) Fail("passphrase in " + args.passphrase_file + " is too long");
  }
  return secret;
}

}  // namespace edgestor::cli
