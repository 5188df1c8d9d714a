set confirm off
set pagination off
set unwindonsignal on
sharedlibrary libc\.so
echo STEP1\n
print (int)pause()
echo STEP2\n
