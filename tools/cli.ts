/** What every command-line tool of the project does the same way. */

/**
 * A reader that stops early (`npm run render -- --stack dev | head`) closes the pipe; that is
 * the reader's choice, not an error worth a stack trace.
 */
export function exitQuietlyOnClosedPipe(): void {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE") throw err;
    process.exit(process.exitCode ?? 0);
  });
}
