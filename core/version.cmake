# Writes core/version.h with the git commit of the source tree, at build time (cmake -P), so results
# record the commit they were built from even when the build was configured at an older one.
# configure_file rewrites the header only when its content changes.
execute_process(COMMAND git rev-parse --short=12 HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE KVQ_GIT_COMMIT OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
execute_process(COMMAND git status --porcelain --untracked-files=no WORKING_DIRECTORY ${SOURCE_DIR}
                OUTPUT_VARIABLE dirty OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT KVQ_GIT_COMMIT)
  set(KVQ_GIT_COMMIT "unknown")
elseif(dirty)
  string(APPEND KVQ_GIT_COMMIT "-dirty")
endif()
configure_file(${SOURCE_DIR}/core/version.h.in ${OUTPUT} @ONLY)
