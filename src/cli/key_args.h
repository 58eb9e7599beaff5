// Where the pool key comes from on the command line: --keyfile or
// --passphrase-file (also $EDGESTOR_KEYFILE, $EDGESTOR_PASSPHRASE_FILE).
// They are global options, set once by main.cc, and read by every command
// that opens or creates a pool.
#pragma once

#include <string>

#include "volume/volume_set.h"

namespace edgestor::cli {

struct KeyArgs {
  std::string keyfile;
  std::string passphrase_file;
  bool empty() const { return keyfile.empty() && passphrase_file.empty(); }
};

void SetKeyArgs(const KeyArgs& args);
const KeyArgs& GetKeyArgs();

// Reads the key file (warns if others may read it) or the first line of the
// passphrase file. Empty secret when neither is given. Throws CliError.
PoolSecret LoadSecret(const KeyArgs& args);

}  // namespace edgestor::cli
