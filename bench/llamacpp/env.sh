# Source this after build.sh: puts the llama.cpp peer's tools and Python module in reach.
#   source bench/llamacpp/env.sh
export DINO_PEER_DIR="${DINO_PEER_DIR:-$HOME/.cache/dino-peer}"
export DINO_PEER_VERSION="${DINO_PEER_VERSION:-0.3.36}"
_dino_peer_src="$DINO_PEER_DIR/src/llama_cpp_python-$DINO_PEER_VERSION"
export LLAMA_CPP_LIB_PATH="$DINO_PEER_DIR/build/bin"
case ":${PATH}:" in *":$LLAMA_CPP_LIB_PATH:"*) ;; *) export PATH="$LLAMA_CPP_LIB_PATH:$PATH" ;; esac
case ":${PYTHONPATH:-}:" in *":$_dino_peer_src:"*) ;; *) export PYTHONPATH="$_dino_peer_src${PYTHONPATH:+:$PYTHONPATH}" ;; esac
case ":${LD_LIBRARY_PATH:-}:" in *":$LLAMA_CPP_LIB_PATH:"*) ;; *) export LD_LIBRARY_PATH="$LLAMA_CPP_LIB_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;; esac
unset _dino_peer_src
